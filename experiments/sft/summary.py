"""Print a stage-two run's held-out losses (first and last evaluation) and its generation
samples (before the first step and after the last) from its TensorBoard files, as markdown."""

import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(run_dir: str) -> None:
    acc = EventAccumulator(str(Path(run_dir) / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    print("| metric | step 0 | last step |\n|---|---|---|")
    for tag in sorted(t for t in acc.Tags()["scalars"] if t.startswith(("val/", "forgetting/", "data/"))):
        s = acc.Scalars(tag)
        print(f"| {tag} | {s[0].value:.3f} | {s[-1].value:.3f} (step {s[-1].step}) |")
    for tag in sorted(acc.Tags()["tensors"]):
        for e in acc.Tensors(tag):
            text = e.tensor_proto.string_val[0].decode().replace("\n", " ")
            print(f"\n{tag} @ step {e.step}: {text[:300]}")


if __name__ == "__main__":
    main(sys.argv[1])
