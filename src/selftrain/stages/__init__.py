"""The stages of the data's way, one file each, shared by every method (pipeline/):

data (the questions, frozen) -> demos (the teacher's, verified) -> sft -> sample (the
student's own paths, judged) -> pairs (preferences) / pseudo_labels (its correct paths) ->
sft, dpo -> evaluate (accuracy, paired comparisons, the calculator's effect).

Each stage takes the run directory and its config section, is skipped when the run
directory marks it done (and resumes what it left half done), and returns what the next
stage needs.
"""
