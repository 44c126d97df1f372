"""Published numbers of P2 §3 that we know, with their source (../shared/reference/papers.md §5).

P2 Table 1: post-SFT DPO on one persona prompt, single-token responses; π(y+) largest decrease
(start → minimum), mean over 10 runs; "_" marks a leading space. Tables 2 and 3 (base-model DPO,
post-SFT IPO) are not in our sources: their cells stay empty rather than guessed.
"""

SOURCE = "P2 Table 1 (mean of 10 runs)"

TABLE1 = [
    # model, y+, y−, p_start, p_min, benign risers, catastrophic risers
    ("OLMo-1B", "Yes", "No", 0.96, 0.27, "_Yes, _yes", "—"),
    ("OLMo-1B", "No", "Never", 0.85, 0.01, "_No", "Yes, _Yes, _yes"),
    ("Gemma-2B", "Yes", "No", 0.99, 0.77, "_Yes, _yes", "—"),
    ("Gemma-2B", "No", "Never", 0.65, 0.44, "no, _No", "yes, Yeah"),
    ("Llama-3-8B", "Yes", "No", 0.99, 0.03, "yes, _yes, _Yes", "—"),
    ("Llama-3-8B", "Sure", "Yes", 0.98, 0.39, "sure, _Sure", "Maybe, No, Never"),
]
