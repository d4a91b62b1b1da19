"""The page at ``/``: a person drops a product's pictures, types its title, and sees the proposed
categories. One self-contained HTML file (its style and script inline; nothing fetched from elsewhere),
posting to the same ``/v1/classify`` every other client uses."""

from __future__ import annotations

from etalage.serve.settings import MAX_PICTURES

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>etalage: propose a category</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 2rem auto; max-width: 52rem; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.3rem; margin-bottom: 0.2rem; }
  p.lead { color: #666; margin-top: 0; }
  #drop { border: 2px dashed #999; border-radius: 8px; padding: 1.2rem; text-align: center; cursor: pointer; }
  #drop.over { border-color: #2a6fdb; background: #eef4ff; }
  #thumbs { display: flex; gap: 0.5rem; margin-top: 0.8rem; justify-content: center; min-height: 0; }
  #thumbs img { width: 96px; height: 96px; object-fit: contain; border: 1px solid #ddd; border-radius: 4px; background: #fff; }
  form .row { display: flex; gap: 0.5rem; margin-top: 0.8rem; }
  input[type=text], input[type=password] { flex: 1; padding: 0.45rem; border: 1px solid #bbb; border-radius: 4px; }
  button { padding: 0.45rem 1.2rem; border: 0; border-radius: 4px; background: #2a6fdb; color: #fff; font-weight: 600; }
  button:disabled { background: #9ab; }
  #status { margin: 1rem 0 0.4rem; color: #555; min-height: 1.2em; }
  #status.error { color: #b00020; }
  ol#categories { list-style: none; padding: 0; margin: 0; }
  .category { display: grid; grid-template-columns: 1fr 14rem; gap: 0.8rem; align-items: center;
              padding: 0.45rem 0; border-bottom: 1px solid #eee; }
  .names { font-weight: 600; }
  .names .path { display: block; font-weight: 400; color: #666; font-size: 0.85rem; }
  .bar { background: #eee; border-radius: 4px; height: 1.2rem; position: relative; overflow: hidden; }
  .bar span { display: block; height: 100%; background: #2a6fdb; }
  .bar em { position: absolute; right: 0.3rem; top: 0.1rem; font-style: normal; font-size: 0.8rem; line-height: 1rem;
            background: rgba(255, 255, 255, 0.85); padding: 0 0.25rem; border-radius: 3px; }
  #signals { color: #666; font-size: 0.85rem; margin-top: 0.6rem; }
</style>
</head>
<body data-state="idle">
<h1>Propose a category</h1>
<p class="lead">Drop up to MAX_PICTURES pictures of one product (in order), add its title if you have one.</p>
<form id="form">
  <div id="drop" tabindex="0">Drop pictures here, or click to choose
    <input id="pictures" type="file" accept="image/*" multiple hidden>
    <div id="thumbs"></div>
  </div>
  <div class="row"><input id="title" type="text" placeholder="title (optional)" maxlength="2000"></div>
KEYFIELD  <div class="row"><button id="go" type="submit" disabled>Propose</button></div>
</form>
<div id="status"></div>
<ol id="categories"></ol>
<div id="signals"></div>
<script>
"use strict";
const MAX = MAX_PICTURES;
let chosen = [];
const $ = (id) => document.getElementById(id);

function setState(state, message, isError) {
  document.body.dataset.state = state;
  $("status").textContent = message || "";
  $("status").className = isError ? "error" : "";
}

function choose(files) {
  chosen = Array.from(files).filter((f) => f.type.startsWith("image/") || f.type === "").slice(0, MAX);
  $("thumbs").replaceChildren(...chosen.map((f) => {
    const img = document.createElement("img");
    img.src = URL.createObjectURL(f);
    img.alt = f.name;
    return img;
  }));
  $("go").disabled = chosen.length === 0;
  setState("chosen", chosen.length + " picture(s) chosen" + (files.length > MAX ? " (the first " + MAX + " kept)" : ""));
}

function percent(p) { return (100 * p).toFixed(p >= 0.1 ? 0 : 1) + "%"; }

function show(answer) {
  $("categories").replaceChildren(...answer.categories.map((c, i) => {
    const li = document.createElement("li");
    li.className = "category";
    li.dataset.categoryId = c.category_id;
    const names = document.createElement("div");
    names.className = "names";
    names.textContent = (i + 1) + ". " + c.names[2];
    const path = document.createElement("span");
    path.className = "path";
    path.textContent = c.names[0] + " \u203a " + c.names[1] + " \u00b7 " + c.category_id;
    names.append(path);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = Math.max(0.5, 100 * c.probability) + "%";
    const label = document.createElement("em");
    label.textContent = percent(c.probability);
    bar.append(fill, label);
    li.append(names, bar);
    return li;
  }));
  $("signals").textContent = "signals: " + (answer.signals.join(", ") || "none");
  setState("done", "answered in " + answer.ms.toFixed(0) + " ms");
}

async function propose(event) {
  event.preventDefault();
  if (!chosen.length) return;
  const body = new FormData();
  chosen.forEach((f) => body.append("picture", f, f.name));
  const title = $("title").value.trim();
  if (title) body.append("title", title);
  const headers = {};
  if ($("key")) headers["Authorization"] = "Bearer " + $("key").value;
  $("go").disabled = true;
  setState("busy", "asking the model\u2026");
  try {
    const response = await fetch("v1/classify", { method: "POST", body, headers });
    const answer = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(response.status + ": " + (answer.error || "no answer"));
    show(answer);
  } catch (err) {
    $("categories").replaceChildren();
    $("signals").textContent = "";
    setState("error", String(err.message || err), true);
  } finally {
    $("go").disabled = chosen.length === 0;
  }
}

const drop = $("drop");
drop.addEventListener("click", (e) => { if (e.target.tagName !== "INPUT") $("pictures").click(); });
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("pictures").click(); });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files); });
$("pictures").addEventListener("change", (e) => choose(e.target.files));
$("form").addEventListener("submit", propose);
</script>
</body>
</html>
"""


KEY_FIELD = '  <div class="row"><input id="key" type="password" placeholder="API key" autocomplete="off"></div>\n'


def page_html(key_required: bool) -> str:
    """The page; with an API key field when the API asks for one (the key stays in the person's browser)."""
    return PAGE.replace("MAX_PICTURES", str(MAX_PICTURES)).replace("KEYFIELD", KEY_FIELD if key_required else "")
