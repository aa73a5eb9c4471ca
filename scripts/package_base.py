"""Ship a trained micro-world base model with visalign (what `visalign demo` starts from).

    visalign world build --out W --preset small --seed 0
    visalign world base --world W --out M
    python scripts/package_base.py --world W --model M

copies M (model, processor, verifier, eval.json, base_config.yaml) to
src/visalign/resources/microworld_base/ with the world's fingerprint, which
`visalign.methods.base_model.packaged.install_packaged_base` checks before using it.
"""

from __future__ import annotations

import argparse
import shutil

from visalign.methods.base_model.packaged import packaged_base_dir, world_fingerprint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True)
    ap.add_argument("--model", required=True)
    args = ap.parse_args()
    dst = packaged_base_dir()
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(args.model, dst, ignore=shutil.ignore_patterns("*.tmp", ".*"))
    (dst / "world_fingerprint.txt").write_text(world_fingerprint(args.world) + "\n")
    size = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
    print(f"packaged {args.model} -> {dst} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
