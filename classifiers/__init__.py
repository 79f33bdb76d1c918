"""fastText classifiers: the educational-value classifier (LLM or reference labels -> fastText) and its
scorer."""
