"""The `rstreams` command: start, follow, inspect and cancel generations; run the local stack.

    rstreams generate "Explain quantum computing" [--model M] [--max-tokens N] [--no-follow]
                      [--json]
    rstreams follow <id> [--after CURSOR] [--json]
    rstreams status <id> [--json]
    rstreams text <id>
    rstreams cancel <id>
    rstreams dev [--port 8000]

The answer goes to stdout, everything else (the session id, a live progress line when
stderr is a terminal, the model's reasoning, dimmed on a terminal, its tool calls, errors)
to stderr; `--json` prints every event as a line of JSON on stdout instead. Ctrl-C while
following detaches: the answer keeps generating, and the command that resumes it is
printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import IO, Any, NoReturn

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from rstreams.client import (
    API_KEY_ENV,
    DEFAULT_URL,
    URL_ENV,
    Cancelled,
    Chunk,
    Client,
    Done,
    Error,
    Event,
    Reasoning,
    RstreamsError,
    Status,
    ToolCall,
    is_terminal,
)

JSON_HELP = "print every event as a line of JSON (reasoning and tool calls too), not the text"
EXIT_OK = 0
EXIT_FAILED = 1  # an API error, or an answer that ended with an error or was cancelled
EXIT_DETACHED = 130  # Ctrl-C, as shells report a SIGINT


class _Interrupts:
    """Ctrl-C raises KeyboardInterrupt, except between writing an event's text and noting
    its cursor: there it waits until both are done, so the printed resume command starts
    exactly after the last text printed."""

    def __init__(self) -> None:
        self.is_held = False
        self.is_pending = False

    def handle(self, _signum: int, _frame: FrameType | None) -> None:
        if self.is_held:
            self.is_pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Defer Ctrl-C until the block ends."""
        self.is_held = True
        try:
            yield
        finally:
            self.is_held = False
            if self.is_pending:
                self.is_pending = False
                raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Use this handler for SIGINT inside the block, unless SIGINT is ignored (as a
        non-interactive shell does for the commands it starts with `&`)."""
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            yield
            return
        previous = signal.signal(signal.SIGINT, self.handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _same_terminal(a: IO[str], b: IO[str]) -> bool:
    try:
        return os.path.samestat(os.fstat(a.fileno()), os.fstat(b.fileno()))
    except (OSError, ValueError):
        return False


class Screen:
    """Writes the answer to stdout and, when stderr is a terminal, a live progress line.

    When stdout is that same terminal, finished lines of the answer are printed above the
    progress line and the unfinished one is shown just over it, so that the two never
    overwrite each other.
    """

    def __init__(self, out: IO[str], err: IO[str], *, quiet: bool = False) -> None:
        self.out = out
        self.err = err
        self.quiet = quiet  # --json: the frames go to stdout, not the text
        self.thinking = ""  # reasoning not yet printed (an unfinished line, on a terminal)
        self.thought = False  # some reasoning was printed (its last line may be open)
        self.calls: dict[int, list[str]] = {}  # tool calls so far: [name, arguments]
        self.chunks = 0  # chunks of the session so far (the next index)
        self.received = 0  # chunks this command received
        self.started = time.monotonic()
        self.first_chunk_at: float | None = None
        self.status = "connecting"
        self.note = ""
        self.wrote_text = False
        self.ends_with_newline = True
        self.partial = ""
        self.live: Live | None = None
        self.shares_terminal = False
        if err.isatty():
            console = Console(file=err, stderr=True, highlight=False)
            self.shares_terminal = out.isatty() and _same_terminal(out, err)
            self.live = Live(
                get_renderable=self._render,
                console=console,
                transient=True,
                refresh_per_second=8,
                redirect_stdout=False,
                redirect_stderr=False,
                vertical_overflow="visible",
            )

    def __enter__(self) -> Screen:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _rate(self) -> float:
        if self.first_chunk_at is None or self.received < 2:
            return 0.0
        return self.received / max(time.monotonic() - self.first_chunk_at, 1e-3)

    def _render(self) -> RenderableType:
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(f" {self.status} ", style="bold reverse")
        line.append(f" {self.chunks} chunks")
        if self.received >= 2:
            line.append(f" · {self._rate():.1f} chunks/s")
        line.append(f" · {time.monotonic() - self.started:.1f} s", style="dim")
        if self.note:
            line.append(f" · {self.note}", style="yellow")
        return Group(Text(self.partial), line) if self.partial else line

    def think(self, text: str) -> None:
        """Show a piece of reasoning on stderr: dimmed, a line at a time, on a terminal."""
        if self.quiet or not text:
            return
        self.thought = True
        if not self.err.isatty():
            self.err.write(text)
            self.err.flush()
            return
        self.thinking += text
        if "\n" in self.thinking:
            done, self.thinking = self.thinking.rsplit("\n", 1)
            self._dim(done)

    def _dim(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(Text(text, style="dim"), soft_wrap=True)
        else:
            self.err.write(f"\x1b[2m{text}\x1b[0m\n")
            self.err.flush()

    def end_thinking(self) -> None:
        """The reasoning is over: print what is left of it and end its line."""
        if not self.thought:
            return
        self.thought = False
        if self.err.isatty():
            if self.thinking:
                self._dim(self.thinking)
            self.thinking = ""
        else:
            self.err.write("\n")
            self.err.flush()

    def show_calls(self) -> None:
        """Print the answer's tool calls on stderr, one line each."""
        for name, arguments in (self.calls[i] for i in sorted(self.calls)):
            line = f"tool call: {name}({arguments})"
            if self.live is not None:
                self.live.console.print(Text(line), soft_wrap=True)
            else:
                self.err.write(line + "\n")
                self.err.flush()
        self.calls = {}

    def write(self, text: str) -> None:
        """Write a piece of the answer."""
        if self.quiet or not text:
            return
        self.end_thinking()
        self.wrote_text = True
        self.ends_with_newline = text.endswith("\n")
        if self.live is not None and self.shares_terminal:
            self.partial += text
            if "\n" in self.partial:
                done, self.partial = self.partial.rsplit("\n", 1)
                self.live.console.print(Text(done), soft_wrap=True)
            console = self.live.console
            # A live display taller than the screen cannot be redrawn in place: print the
            # wrapped lines of a long unfinished paragraph above it, all but the last.
            lines = Text(self.partial).wrap(console, console.width)
            if len(lines) > max(1, console.height // 2):
                console.print(Text("\n".join(line.plain for line in lines[:-1])), soft_wrap=True)
                self.partial = lines[-1].plain
            return
        self.out.write(text)
        self.out.flush()

    def on_event(self, event: Event) -> None:
        """Show one event."""
        if isinstance(event, Chunk | Reasoning | ToolCall):
            if self.first_chunk_at is None:
                self.first_chunk_at = time.monotonic()
            self.received += 1
            self.chunks = event.index + 1
            self.status = "running"
        if isinstance(event, Chunk):
            self.write(event.text)
        elif isinstance(event, Reasoning):
            self.think(event.text)
        elif isinstance(event, ToolCall):
            call = self.calls.setdefault(event.call_index, ["", ""])
            call[0] = event.name or call[0]
            call[1] += event.arguments
        elif isinstance(event, Status):
            self.status = event.status
            if event.attempt is not None:
                self.note = f"attempt {event.attempt}"
        elif isinstance(event, Done):
            self.status, self.chunks = "completed", event.chunks
        elif isinstance(event, Cancelled):
            self.status = "cancelled"
        elif isinstance(event, Error):
            self.status = "failed"
        if not isinstance(event, Status):
            self.note = ""

    def on_reconnect(self, attempt: int, why: RstreamsError) -> None:
        """Show that the connection is being retried."""
        self.status, self.note = "reconnecting", f"attempt {attempt}, {why.code}"

    def stop(self) -> None:
        """Take the progress line away and leave the terminal at the start of a line."""
        if not self.quiet:
            self.end_thinking()
            self.show_calls()
        if self.live is not None and self.live.is_started:
            self.live.stop()
        if self.partial:
            self.out.write(self.partial)
            self.partial = ""
        if self.wrote_text and not self.ends_with_newline and self.out.isatty():
            self.out.write("\n")
        self.out.flush()

    def summary(self) -> str:
        """One line on how it went."""
        elapsed = time.monotonic() - self.started
        rate = f", {self._rate():.1f} chunks/s" if self.received >= 2 else ""
        return f"{self.status}: {self.chunks} chunks in {elapsed:.1f} s{rate}"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _print_frame(frame: Mapping[str, Any]) -> None:
    print(json.dumps(frame, ensure_ascii=False, separators=(",", ":")), flush=True)


def follow_to_terminal(
    client: Client, session_id: str, after: str | None, *, as_json: bool = False
) -> int:
    """Print the answer after `after` as it comes (with `as_json`, every event as a line of
    JSON); the exit status of the command."""
    interrupts = _Interrupts()
    cursor = after
    last: Event | None = None
    screen = Screen(sys.stdout, sys.stderr, quiet=as_json)
    on_frame = _print_frame if as_json else None
    try:
        with interrupts.installed(), screen:
            for event in client.follow(
                session_id, after, on_reconnect=screen.on_reconnect, on_frame=on_frame
            ):
                with interrupts.held():
                    screen.on_event(event)
                    if event.id is not None:
                        cursor = event.id
                    last = event
    except KeyboardInterrupt:
        if last is None or not is_terminal(last):
            resume = f"rstreams follow {session_id}" + (f" --after {cursor}" if cursor else "")
            _say(f"Detached; the answer keeps generating. Resume with: {resume}")
            return EXIT_DETACHED
    if screen.live is not None and screen.received:
        _say(screen.summary())
    if last is None:  # the cursor was the end already: how did it end?
        status = client.status(session_id)["status"]
        return EXIT_OK if status == "completed" else _ended_badly(status, None)
    if isinstance(last, Error):
        return _ended_badly("failed", last)
    if isinstance(last, Cancelled):
        return _ended_badly("cancelled", None)
    return EXIT_OK


def _ended_badly(status: str, error: Error | None) -> int:
    if error is not None:
        _say(f"rstreams: the answer ended with an error: {error.message} ({error.code})")
    else:
        _say(f"rstreams: the answer {'was cancelled' if status == 'cancelled' else 'failed'}")
    return EXIT_FAILED


def cmd_generate(client: Client, args: argparse.Namespace) -> int:
    """`rstreams generate PROMPT`."""
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    session = client.generate(
        prompt,
        model=args.model,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        idempotency_key=args.idempotency_key,
    )
    if args.no_follow:
        print(session.session_id, flush=True)
        return EXIT_OK
    _say(f"session {session.session_id} ({session.model})")
    return follow_to_terminal(client, session.session_id, None, as_json=args.json)


def cmd_follow(client: Client, args: argparse.Namespace) -> int:
    """`rstreams follow ID [--after CURSOR] [--json]`."""
    return follow_to_terminal(client, args.session_id, args.after, as_json=args.json)


def _table(info: dict[str, Any]) -> str:
    rows = [
        ("session", info.get("sessionId")),
        ("status", info.get("status")),
        ("model", info.get("model")),
        ("chunks", info.get("chunks")),
        ("created", info.get("createdAt")),
        ("updated", info.get("updatedAt")),
        ("finish", info.get("finishReason")),
        ("usage", json.dumps(info["usage"]) if info.get("usage") else None),
    ]
    if info.get("error"):
        error = info["error"]
        rows.append(("error", f"{error.get('message')} ({error.get('code')})"))
    return "\n".join(f"{name:<8} {value}" for name, value in rows if value is not None)


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    """`rstreams status ID [--json]`."""
    info = client.status(args.session_id)
    print(json.dumps(info, indent=2) if args.json else _table(info))
    return EXIT_OK


def cmd_text(client: Client, args: argparse.Namespace) -> int:
    """`rstreams text ID`."""
    text = client.text(args.session_id)
    sys.stdout.write(text + ("\n" if sys.stdout.isatty() and not text.endswith("\n") else ""))
    return EXIT_OK


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    """`rstreams cancel ID`."""
    status = client.cancel(args.session_id)
    if status == "cancelled":
        print(f"{args.session_id} cancelled")
    else:
        print(f"{args.session_id} had already ended: {status}")
    return EXIT_OK


def cmd_dev(args: argparse.Namespace) -> int:
    """`rstreams dev`: the README's local stack."""
    from rstreams import dev  # imports the server's settings: only for this command

    dev.run(args)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"the API's address (default: ${URL_ENV}, else the running `rstreams dev` "
        f"stack's, else {DEFAULT_URL})",
    )
    common.add_argument(
        "--api-key",
        default=argparse.SUPPRESS,
        help=f"sent as Authorization: Bearer (default: ${API_KEY_ENV})",
    )
    parser = argparse.ArgumentParser(
        prog="rstreams",
        description="Resumable LLM streams: generate, follow, inspect and cancel answers.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser(
        "generate", parents=[common], help="start an answer and print it as it comes"
    )
    generate.add_argument("prompt", help='the prompt ("-" reads it from stdin)')
    generate.add_argument("--model", help="a model id (default: the API's DEFAULT_MODEL)")
    generate.add_argument("--max-tokens", type=int, help="the longest answer, in tokens")
    generate.add_argument("--temperature", type=float)
    generate.add_argument(
        "--idempotency-key", help="a retry with the same key gets the same session"
    )
    generate.add_argument(
        "--no-follow", action="store_true", help="print the session id and return at once"
    )
    generate.add_argument("--json", action="store_true", help=JSON_HELP)
    generate.set_defaults(run=cmd_generate)

    follow = commands.add_parser(
        "follow", parents=[common], help="print an answer from a cursor on, live, to its end"
    )
    follow.add_argument("session_id")
    follow.add_argument("--after", help="the cursor of the last event already printed")
    follow.add_argument("--json", action="store_true", help=JSON_HELP)
    follow.set_defaults(run=cmd_follow)

    status = commands.add_parser("status", parents=[common], help="a session's status")
    status.add_argument("session_id")
    status.add_argument("--json", action="store_true", help="the API's JSON as it is")
    status.set_defaults(run=cmd_status)

    text = commands.add_parser("text", parents=[common], help="the whole text so far")
    text.add_argument("session_id")
    text.set_defaults(run=cmd_text)

    cancel = commands.add_parser("cancel", parents=[common], help="stop a generation")
    cancel.add_argument("session_id")
    cancel.set_defaults(run=cmd_cancel)

    dev = commands.add_parser(
        "dev", help="run Redis, a worker and the API locally (the README's local stack)"
    )
    from rstreams.dev import add_arguments

    add_arguments(dev)
    dev.set_defaults(run=None)
    return parser


def _explain(e: RstreamsError) -> str:
    """One line a user can act on."""
    if e.status is None:
        return f"{e.message}; is it running? (`rstreams dev` starts one locally)"
    if e.status == 401:
        return f"{e.message} (unauthorized): set {API_KEY_ENV} or pass --api-key"
    if e.status == 429 and e.retry_after_s is not None:
        return f"{e.message} ({e.code}); retry after {e.retry_after_s:.0f} s"
    return f"{e.message} ({e.code})"


_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{21}")
_TAKES_VALUE = frozenset({"--url", "--api-key", "--after"})
_TAKES_ID = frozenset({"follow", "status", "text", "cancel"})


def _protect_ids(argv: list[str]) -> list[str]:
    """Move a session id that starts with "-" (nanoid ids may) behind a "--", where
    argparse takes it for the positional it is rather than an unknown option."""
    start = 0  # just after the command: the first word that is no option nor its value
    while start < len(argv) and argv[start].startswith("-"):
        start += 2 if argv[start] in _TAKES_VALUE else 1
    if start >= len(argv) or argv[start] not in _TAKES_ID or "--" in argv:
        return argv
    for n in range(start + 1, len(argv)):
        arg = argv[n]
        if arg.startswith("-") and _SESSION_ID.fullmatch(arg) and argv[n - 1] not in _TAKES_VALUE:
            return [*argv[:n], *argv[n + 1 :], "--", arg]
    return argv


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the command line and exit with its status."""
    args = build_parser().parse_args(_protect_ids(sys.argv[1:] if argv is None else argv))
    if args.run is None:
        sys.exit(cmd_dev(args))
    client = Client(getattr(args, "url", None), getattr(args, "api_key", None))
    try:
        sys.exit(args.run(client, args))
    except RstreamsError as e:
        _say(f"rstreams: {_explain(e)}")
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        sys.exit(EXIT_DETACHED)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining
        # again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_FAILED)
    finally:
        client.close()
