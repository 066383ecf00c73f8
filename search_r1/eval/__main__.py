"""``python -m search_r1.eval [run] ...`` evaluates; ``compare ...`` merges results; ``audit ...`` measures
how many gold answers the corpus and the retriever's top-k hold."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        from search_r1.eval.compare import main as compare_main

        compare_main(argv[1:])
        return
    if argv and argv[0] == "audit":
        from search_r1.eval.audit import main as audit_main

        audit_main(argv[1:])
        return
    if argv and argv[0] == "run":
        argv = argv[1:]
    from search_r1.eval.run import main as run_main

    run_main(argv)


if __name__ == "__main__":
    main()
