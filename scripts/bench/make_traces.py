"""Writes a JSONL of reasoning-like traces for the engine benchmarks.

Each row has ~20 steps of 60-140 characters separated by blank lines, so 1 GB of text
gives ~10M steps. Deterministic (fixed seed).
"""
import json
import random
import sys

path, size_mb = sys.argv[1], float(sys.argv[2])
rng = random.Random(7)
words = ("so we add the numbers then check again carefully this means total apples each "
         "bag contains more than before therefore result value step next").split()
target = int(size_mb * 1024 * 1024)
written = 0
i = 0
with open(path, "w") as f:
    while written < target:
        steps = []
        for s in range(rng.randint(16, 24)):
            n = rng.randint(10, 22)
            steps.append(" ".join(rng.choice(words) for _ in range(n)) + f" {rng.randint(0, 999)}.")
        response = "\n\n".join(steps)
        f.write(json.dumps({"id": f"r{i}", "prompt": f"problem {i}", "answer": "1", "response": response}) + "\n")
        written += len(response)
        i += 1
print(f"{i} rows, {written / 1e6:.1f} MB of response text", file=sys.stderr)
