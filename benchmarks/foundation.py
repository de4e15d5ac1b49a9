"""Foundation figures, measured in one run on one machine.

- cold image build: empty cache and a fresh engine (debootstrap, wheel downloads, three builds)
- warm image build: the same call again (nothing to do)
- private engine: first start, graceful restart, crash + start
- the floor: a bare `docker run` of the base image (create + start + wait + remove)

Usage: python benchmarks/foundation.py [--repeat N] [--skip-cold]
Runs as root with dockerd and debootstrap installed (ci/setup.sh). Uses throw-away engines and a
throw-away cache; the machine's own engines and caches are left alone.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _common import machine, summarise, timed  # beside this script

from openshell_core import labels
from openshell_core.engine import Engine, PrivateEngine
from openshell_core.images import ensure_base_image, ensure_images
from openshell_core.images.cache import cache_dir


def bare_run(engine: Engine, image: str, network: str, name: str) -> None:
    engine.create_container(
        name=name,
        image=image,
        command=["true"],
        network=network,
        labels=labels.ownership(role="benchmark"),
    )
    engine.start_container(name)
    engine.api.wait(name, timeout=60)
    engine.remove_container(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="samples per repeated figure")
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold image build")
    args = parser.parse_args()

    rows: list[tuple[str, str]] = []
    root = Path(tempfile.mkdtemp(prefix="osb-", dir="/tmp"))
    engine = PrivateEngine(f"bench-{root.name}", root / "e")
    try:
        rows.append(("private engine first start (s)", summarise([timed(engine.start)])))
        client = engine.connect()
        if not args.skip_cold:
            cold_cache = root / "cache"
            rows.append(
                (
                    "image build, cold: empty cache, new engine (s)",
                    summarise([timed(lambda: ensure_images(client, cache=cold_cache))]),
                )
            )
            cache = cold_cache
        else:
            cache = cache_dir()
            ensure_images(client, cache=cache)
        rows.append(
            (
                "image build, warm: nothing changed (s)",
                summarise(
                    [timed(lambda: ensure_images(client, cache=cache)) for _ in range(args.repeat)]
                ),
            )
        )
        base = ensure_base_image(client, cache=cache)
        client.create_network("bench", labels=labels.ownership(role="benchmark"))
        rows.append(
            (
                "floor: bare docker run of the base image (s)",
                summarise(
                    [
                        timed(lambda i=i: bare_run(client, base, "bench", f"bare{i}"))
                        for i in range(args.repeat)
                    ]
                ),
            )
        )
        rows.append(
            (
                "private engine graceful restart (s)",
                summarise([timed(engine.restart) for _ in range(args.repeat)]),
            )
        )

        def crash_and_start() -> None:
            engine.crash()
            engine.start()

        rows.append(
            (
                "private engine crash + start (s)",
                summarise([timed(crash_and_start) for _ in range(args.repeat)]),
            )
        )
        client.close()
    finally:
        engine.purge()
        shutil.rmtree(root, ignore_errors=True)

    print(f"machine: {machine()}")
    print(f"repeats: {args.repeat} (min / median / max where repeated)\n")
    print("| figure | seconds |\n|---|---|")
    for figure, value in rows:
        print(f"| {figure} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
