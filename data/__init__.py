"""Tasks for nanoAFT: the built-in synthetic word problems (synth), GSM8K loading (dataset) and grading (answers)."""
