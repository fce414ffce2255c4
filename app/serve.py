"""Start NIP Explorer's server: ``python -m app.serve [streamlit options]`` (what ``make run`` does).

The same as ``streamlit run app/streamlit_app.py [options]``, except that the engine starts
warming in a background thread (:func:`app.warmup.start_at_launch`) while the server starts
listening, instead of when the first visitor connects. Streamlit runs no app code before a
visitor connects, so only a launcher can do this. The server is not delayed: it listens as soon
as Streamlit itself is ready.
"""
from __future__ import annotations

import sys
from pathlib import Path

ENTRY = Path(__file__).resolve().parent / "streamlit_app.py"


def main(argv: list[str] | None = None) -> None:
    from app import warmup

    warmup.start_at_launch()
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(ENTRY), *(sys.argv[1:] if argv is None else argv)]
    cli.main(prog_name="streamlit")


if __name__ == "__main__":
    main()
