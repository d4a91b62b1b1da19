"""The title specialist: a product's title (a catalogue listing's, ``etalage pack``) scored over every
class of the taxonomy.

Catalogue titles name the product ("Puma Men Grey Solid Round Neck T-Shirt"); published multimodal
results find the title the strongest single signal with the picture still adding to it (Amazon's
tri-modal product classifier, arXiv 1907.00420: title 82.7% F1, picture 61.0%, late fusion 88.2%; the
Rakuten SIGIR eCom 2020 challenge went to a late fusion of text and picture). This specialist gives
fusion the title's ranking; the core's pictures answer for the products without a title, where its
features are missing (not zero).
"""

from etalage.specialists.title.model import TitleSpecialist

__all__ = ["TitleSpecialist"]
