"""The five sections of `python -m loadtest bench` and what each hands to the report (model.py)."""
