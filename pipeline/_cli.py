"""The one way every stage exits on bad input: a one-line message naming the problem, no traceback."""
import sys

EXPECTED = (ValueError, FileNotFoundError, ConnectionError, OSError)


def run(main, stage: str, extra: tuple = ()) -> None:
    try:
        main()
    except EXPECTED + tuple(extra) as e:
        print(f"{stage}: error: {e}", file=sys.stderr)
        sys.exit(1)
