"""P2 §6 refusal experiment: harmful-prompt loaders, refusal judges and preference-pair construction."""
