"""A bigger randomized auth conformance sweep against Synapse (by hand; not a test).

Run from the repository root with our venv's Python::

    python bench/auth_conformance_sweep.py [--seed N] [--cases N] [--batch N]
        [--synapse-python PATH] [--dump FILE]

It generates seeded cases (``tests/interop/auth_cases.py``: every room version 1-12),
asks Synapse for its verdicts in a child process under the Synapse venv's Python
(``--synapse-python``, default ``$FEDSERVER_SYNAPSE_PYTHON``), compares them with ours and
prints the agreement it measured, the documented divergences it met
(``docs/auth-conformance.md``) and the first unexplained disagreements.  ``--dump`` writes
every unexplained case (event, the events it is judged against, both verdicts) as JSON.
The same seed gives the same cases; the CI test (tests/interop/
test_synapse_auth_conformance.py) runs seed 12 with 6,000 cases.  Exit status 1 if any
disagreement is unexplained.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.interop.auth_cases import generate  # noqa: E402
from tests.interop.auth_conformance import Report, compare, synapse_verdicts  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=20_000, help="cases per Synapse process")
    parser.add_argument("--synapse-python", default=os.environ.get("FEDSERVER_SYNAPSE_PYTHON"))
    parser.add_argument("--dump", help="write the unexplained cases to this JSON file")
    args = parser.parse_args()
    if not args.synapse_python:
        parser.error("no Synapse: pass --synapse-python or set FEDSERVER_SYNAPSE_PYTHON")

    started = time.monotonic()
    cases = generate(args.seed, args.cases)
    total = Report()
    version = "?"
    for start in range(0, len(cases), args.batch):
        batch = cases[start:start + args.batch]
        version, verdicts = synapse_verdicts(args.synapse_python, batch)
        part = compare(batch, verdicts)
        total.total += part.total
        total.agreed += part.agreed
        total.outcomes.update(part.outcomes)
        total.divergences.update(part.divergences)
        total.rules_hit.update(part.rules_hit)
        total.versions.update(part.versions)
        total.unexplained.extend(part.unexplained)
        print(f"  {start + len(batch)} / {len(cases)} cases", file=sys.stderr)
    elapsed = time.monotonic() - started
    print(f"seed {args.seed}, Synapse {version}, {elapsed:.0f} s")
    print(total.summary())
    print(f"{len(total.rules_hit)} distinct rules rejected at least one case")
    if args.dump:
        with open(args.dump, "w", encoding="utf-8") as f:
            json.dump([{"case": c, "ours": o, "synapse": s} for c, o, s in total.unexplained], f, indent=1)
    return 1 if total.unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
