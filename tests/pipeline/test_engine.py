"""The engine contract on toy stages (no model): only the chunks a stage still has to do run, stage after stage;
a forked stage runs in children that hold what the parent opened; reports and payloads reach the job; the
statistics count what ran; a stage's error reaches the job as it was raised."""

from __future__ import annotations

import os

import pytest

from etalage.errors import DataError
from etalage.pipeline.engine import LocalEngine, Stage


class Doubler(Stage):
    """Writes chunk (a, b)'s 'part' into a folder; a chunk whose part is there is done."""

    name = "double"
    label = "doubling"

    def __init__(self, folder, forked=False, fail_on=None):
        self.folder, self.forked, self.fail_on = folder, forked, fail_on
        self.state = None

    def todo(self, rows, upstream):
        return not (self.folder / f"{rows[0]}-{rows[1]}").exists()

    def open(self, threads=None):
        if self.state is None:
            self.state = {"factor": 2, "opened_in": os.getpid()}
        self.threads = threads

    def run(self, rows, chunk=None):
        if rows == self.fail_on:
            raise DataError(f"product {rows[0]}: unreadable")
        (self.folder / f"{rows[0]}-{rows[1]}").write_text(str(self.state["factor"] * rows[0]))
        return {"pictures": rows[1] - rows[0], "payload": {"pid": os.getpid(), "opened_in": self.state["opened_in"],
                                                           "threads": self.threads}}


class After(Stage):
    """Runs where the stage before it reported work on the chunk."""

    name = "after"

    def todo(self, rows, upstream):
        return upstream.get("double", {}).get("worked", False)

    def run(self, rows, chunk=None):
        return {}


@pytest.mark.parametrize("forked", [False, True])
def test_stages_run_the_chunks_they_have_to_do(tmp_path, forked):
    chunks = [(0, 10), (10, 20), (20, 30), (30, 35)]
    (tmp_path / "10-20").write_text("done before")
    seen = []
    stats = LocalEngine(progress=False, workers=2).run([Doubler(tmp_path, forked), After()], chunks, "test",
                                                        lambda stage, rows, report: seen.append((stage.name, rows,
                                                                                                 report)))
    doubled = [(rows, r["payload"]) for name, rows, r in seen if name == "double"]
    assert [rows for rows, _ in doubled] == [(0, 10), (20, 30), (30, 35)], "in order, the done chunk skipped"
    assert [rows for name, rows, _ in seen if name == "after"] == [(0, 10), (20, 30), (30, 35)]
    assert (tmp_path / "20-30").read_text() == "40"
    pids = {p["pid"] for _, p in doubled}
    if forked:
        assert os.getpid() not in pids and all(p["opened_in"] == os.getpid() for _, p in doubled), \
            "children run what the parent opened, inherited"
        assert {p["threads"] for _, p in doubled} == {1}
    else:
        assert pids == {os.getpid()} and {p["threads"] for _, p in doubled} == {None}, "the caller's threads alone"
    s = stats.stages["double"]
    assert (s.chunks, s.products, s.pictures) == (3, 25, 25) and s.busy_s > 0


@pytest.mark.parametrize("forked", [False, True])
def test_a_stage_error_reaches_the_job_as_raised(tmp_path, forked):
    with pytest.raises(DataError, match="product 10: unreadable"):
        LocalEngine(progress=False, workers=2).run([Doubler(tmp_path, forked, fail_on=(10, 20))],
                                                   [(0, 10), (10, 20), (20, 30)], "test")
