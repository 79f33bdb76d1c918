"""A small bf16 Phi-3 trainer that reads the phase mixes (OUTPUT/mix/phase1, then phase2) and resumes
exactly."""
