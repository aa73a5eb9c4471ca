"""Plots and statistics for reports on hallucination and alignment.

- :mod:`.distributions`: FiSAO's figures (score distributions, Fig. 1, 6; reward shift, Fig. 4;
  correlation with caption metrics, Fig. 2, 7);
- :mod:`.hallucination_kinds`: what kind of mistake each hallucinated object is (a misread
  object, a guess at an empty spot, a relation);
- :mod:`.recall_by_object`: which of an image's objects descriptions miss (by size rank, size,
  objects per image);
- :mod:`.repetition`: object sentences that only repeat earlier objects;
- :mod:`.pope_by_mention`: POPE Yes rates split by what a reference description named;
- :mod:`.yes_no_discrimination`: bias vs discrimination of yes/no answers (model and verifier);
- :mod:`.category_rewards`: what FiSAO's verifier would pay per category, present vs absent.
"""
