"""``attnlab viz [RUN ...]``: the parser and command, wired into ``attnlab.cli`` by ``add_viz_parser``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_viz_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("viz", help="local web app: look inside models (attention, relations, routing)")
    p.add_argument("runs", nargs="*", help="run directories or HF model directories offered in the app")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    p.add_argument("--max-prompt-tokens", type=int, default=256, help="longest prompt analysed")
    p.add_argument("--max-parameters", type=int, default=200_000_000, help="largest model loaded")
    p.add_argument("--max-new-tokens", type=int, default=200, help="longest generation")
    p.add_argument("--allow-any-path", action="store_true",
                   help="let the page load models from any path it names (default: only the runs given, and "
                        "what lies inside them)")
    return p


def cmd_viz(args: argparse.Namespace) -> int:
    from ..cli import _Parser
    from ..errors import AttnlabError
    from ..loading import check_model_files
    from .server import serve

    parser = _Parser(prog="attnlab viz")
    if not args.runs and not args.allow_any_path:
        parser.error("give the run directories to look inside (or --allow-any-path to let the page name any)")
    for run in args.runs:
        if not (Path(run) / "config.json").is_file():
            parser.error(f"{run} is not a saved model: no config.json there")
        try:
            check_model_files(run, causal_only=False)  # a damaged run is refused at start, not at its first request
        except AttnlabError as exc:
            print(f"attnlab viz: error: {exc}", file=sys.stderr)
            return 2
    if not 0 <= args.port < 65536:
        parser.error(f"--port must be 0..65535, got {args.port}")
    for name in ("max_prompt_tokens", "max_parameters", "max_new_tokens"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    try:
        serve(args.runs, args.host, args.port, max_prompt_tokens=args.max_prompt_tokens,
              max_parameters=args.max_parameters, max_new_tokens=args.max_new_tokens,
              allow_any_path=args.allow_any_path)
    except OSError as exc:  # port in use, bad host
        parser.error(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}")
    except AttnlabError as exc:
        print(f"attnlab viz: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
