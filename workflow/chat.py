"""``lens-chat``: talk to a configured model and see, for every token of its reply, the
layer where it first became the lens's top-1 and its final probability.

    lens-chat                                   # the first model of config/config.yaml
    lens-chat --model gemma-3-270m --raw        # a base model: continue plain text
    lens-chat --once "What is the capital of France?" --trace reply.csv
    python -m workflow.chat --help

Any model key of the config (GGUF, package, local, hf) is loaded the way the pipeline loads
it (its device, dtype, backend and placement). A GGUF or packaged model is read from the
pipeline's resources/models/{model}/ where it has prepared it from the source as it is now
(its manifest's sha256 or package version), else dequantised once into
resources/chat-models/{model}/: never into the pipeline's own directory, whose newer time
would make Snakemake re-run every job of that model. The tuned
lens is shown where the pipeline has trained it (resources/lenses/{model}/), or the Python
API (workflow/api.py) has (resources/chat-lenses/{model}/). The reply goes
through the model's own chat template; ``--raw`` continues the text instead (for base
models, which have none). Generation uses the key-value cache, and the lens reads only the
new position's residuals at each step (workflow/lens/generation.py).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from workflow.api import OWN_LENSES, layer_words, load_config, prepared_dir, setting_choices, trained_lens_dir
from workflow.base.atomic import atomic_paths
from workflow.base.errors import UserError
from workflow.config.schema import model_entry
from workflow.config.settings import LensSettings
from workflow.provenance.record import digests_kept_in

log = logging.getLogger("workflow.chat")

COLUMNS = "{index:>4}  {token:<18} {prob:>7}  {lenses}"


def prompt_ids(tokenizer, messages: list[dict[str, str]], raw: bool, key: str) -> list[int]:
    """The conversation through the model's chat template, ready for the reply; with
    ``raw`` the last message's text as it is."""
    if raw:
        return list(tokenizer(messages[-1]["content"])["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"model {key!r} has no chat template (a base model, or one whose files carry none): "
            "use --raw to have it continue your text instead"
        )
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def shown(token: str) -> str:
    """A token as text on one line: quoted, with newlines and tabs escaped."""
    return repr(token)


class Chat:
    def __init__(self, args: argparse.Namespace):
        from workflow.lens.generation import LensGenerator  # torch: not at lens-chat's start
        from workflow.lens.session import open_tuned_lens  # torch: not at lens-chat's start
        from workflow.model.load import load_model  # torch: not at lens-chat's start

        config = load_config(Path(args.config))
        key = args.model or next(iter(config["models"]), None)
        if key is None:
            raise UserError(f"{args.config}: no models configured")
        entry = model_entry(config, key)
        workdir = Path(args.config).resolve().parent.parent if args.workdir is None else Path(args.workdir)
        settings = LensSettings.from_config({**config["lens"], "positions": "last"})
        print(f"loading {key} ...", file=sys.stderr)
        with digests_kept_in(workdir):  # the pipeline's digest cache, wherever lens-chat is started
            self.model = load_model(
                key, entry, prepared_dir(key, entry, workdir, args.config), device=args.device or config["device"],
                dtype=args.dtype or config["dtype"], backend=config["backend"], lens=settings,
                placement=config.get("placement"), configfile=args.config)
        if self.model.from_file is not None:
            seconds, cost = self.model.from_file.token_cost(key, args.max_new_tokens)
            if seconds > args.max_seconds_per_token:
                raise UserError(
                    f"{cost}: over --max-seconds-per-token {args.max_seconds_per_token:g}, so lens-chat does not start. "
                    "Raise it to chat anyway, or give the model memory to run from (weights: dequantised, where it fits)"
                )
            print(f"({cost})", file=sys.stderr)
        tuned = None
        if "tuned" in config["lenses"] and not args.no_tuned:
            trained = trained_lens_dir(key, workdir)
            if trained is not None:
                tuned, _ = open_tuned_lens(self.model, settings, trained)
            else:
                print(f"(logit lens only: no tuned lens in {workdir / 'resources' / 'lenses' / key}; the pipeline trains it "
                      f"there when it computes the model's results from nothing, and the Python API's Model.tuned_lens() "
                      f"in {workdir / OWN_LENSES / key})", file=sys.stderr)
        self.generator = LensGenerator(self.model, settings, tuned)
        self.key, self.args = key, args
        self.rows: list[dict[str, Any]] = []
        self.turn = 0
        self.last = None  # the last reply (workflow.lens.generation.Reply)

    def header(self) -> str:
        lenses = "   ".join(f"{name + ' lens: top-1 from (stays)':<28}" for name in self.generator.lens_names)
        return COLUMNS.format(index="#", token="token", prob="p", lenses=lenses)

    def line(self, trace) -> str:
        n = self.model.n_layers
        cells = []
        for name in self.generator.lens_names:
            first, stable = trace.first_top1_layer(name), trace.stable_top1_layer(name)
            cells.append(f"{'never top-1' if first is None else f'layer {first} ({layer_words(stable)}) of {n}':<28}")
        return COLUMNS.format(index=trace.index, token=shown(self.generator.names(trace.token_id)),
                              prob=f"{trace.model_prob:.3f}", lenses="   ".join(cells))

    def layers(self, index: int) -> str:
        """What every layer's lens predicted at the position that chose reply token ``index``
        of the last reply: per layer and lens the top-1 token and its probability, the
        chosen token marked where it is the top-1."""
        if self.last is None or not self.last.tokens:
            raise UserError("no reply yet: ask something first")
        if not 0 <= index < len(self.last.tokens):
            raise UserError(f"the last reply has tokens 0 to {len(self.last.tokens) - 1}; {index} is not one of them")
        trace = self.last.tokens[index]
        names = self.generator.names
        lenses = self.generator.lens_names
        lines = [f"token {index} {shown(names(trace.token_id))}: the top-1 of every layer (* = this token)",
                 (f"{'layer':>5}  " + "  ".join(f"{name + ' lens':<28}" for name in lenses)).rstrip()]
        for layer in range(self.model.n_layers + 1):
            cells = []
            for name in lenses:
                stats = trace.stats[name][layer]
                mark = "*" if stats.topk_ids[0] == trace.token_id else " "
                cells.append(f"{mark}{shown(names(stats.topk_ids[0])):<20} {stats.topk_probs[0]:.3f}")
            lines.append((f"{layer:>5}  " + "  ".join(f"{cell:<28}" for cell in cells)).rstrip())
        return "\n".join(lines)

    def fitted(self, messages: list[dict[str, str]]) -> tuple[list[int], list[dict[str, str]]]:
        """The prompt's ids, with the oldest turns left out until the prompt and the reply fit
        the model's positions; a single message too long for them is refused."""
        from workflow.lens.session import context_limit  # torch: not at lens-chat's start

        limit = context_limit(self.model)
        room = None if limit is None else limit - self.args.max_new_tokens
        ids = prompt_ids(self.model.tokenizer, messages, self.args.raw, self.key)
        while room is not None and len(ids) > room and len(messages) > 1:
            messages = messages[2:] if len(messages) > 2 else messages[1:]  # a user turn and its answer
            ids = prompt_ids(self.model.tokenizer, messages, self.args.raw, self.key)
        if room is not None and len(ids) > room:
            raise UserError(
                f"the message is {len(ids)} tokens; {self.key} takes {limit} positions, {self.args.max_new_tokens} of them "
                "for the reply (--max-new-tokens): shorten the message"
            )
        return ids, messages

    def reply(self, messages: list[dict[str, str]]) -> str:
        ids, messages[:] = self.fitted(list(messages))
        print(self.header(), flush=True)
        reply = self.generator.generate(
            ids, self.args.max_new_tokens, self.args.temperature, self.args.seed,
            on_trace=lambda trace: print(self.line(trace), flush=True),
        )
        text = self.model.tokenizer.decode(reply.token_ids, skip_special_tokens=True)
        rate = len(reply.tokens) / reply.seconds if reply.seconds else float("nan")
        print(f"\n{self.key}: {text}", flush=True)
        print(f"({len(reply.tokens)} tokens in {reply.seconds:.1f} s, {rate:.1f} tokens/s with the lens; "
              f"{'stopped at end of turn' if reply.stopped == 'stop' else 'max new tokens reached'})", flush=True)
        self.turn += 1
        self.last = reply
        self.rows += self.generator.records(reply, f"turn-{self.turn}")
        if self.args.trace:
            self.write_trace()
        return text

    def write_trace(self) -> None:
        from workflow.lens.records import write_records_file  # pandas: not at lens-chat's start

        path = self.args.trace
        with atomic_paths(path) as (tmp,):
            write_records_file(tmp, self.rows, "parquet" if str(path).endswith(".parquet") else "csv")

    def interactive(self) -> None:
        messages: list[dict[str, str]] = []
        print(f"chatting with {self.key} ({'raw text' if self.args.raw else 'its chat template'}); "
              "/layers N shows every layer's top-1 for token N of the reply; an empty line or Ctrl-D ends", flush=True)
        while True:
            try:
                text = input("you> ")
            except EOFError:
                print()
                return
            if not text.strip():
                return
            if text.strip().startswith("/layers"):
                try:
                    print(self.layers(int(text.split()[1])) if len(text.split()) == 2 and text.split()[1].isdigit()
                          else "lens-chat: /layers N, with N a token number of the last reply", flush=True)
                except UserError as error:
                    print(f"lens-chat: {error}", flush=True)
                continue
            messages = [{"role": "user", "content": text}] if self.args.raw else [*messages, {"role": "user", "content": text}]
            try:
                answer = self.reply(messages)
            except UserError as error:  # too long: say so, and let the user go on
                print(f"lens-chat: {error}", flush=True)
                messages = messages[:-1]
                continue
            if not self.args.raw:
                messages.append({"role": "assistant", "content": answer})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lens-chat",
        description="Chat with a configured model; beside each token of the reply, the layer where it first became the "
                    "lens's top-1 and its final probability.",
    )
    p.add_argument("--model", help="a model key of the config (default: its first)")
    p.add_argument("--config", default="config/config.yaml", help="the pipeline's config (default: %(default)s)")
    p.add_argument("--workdir", help="where resources/ is (default: the config's directory's parent)")
    p.add_argument("--once", metavar="PROMPT", help="answer this one prompt and exit")
    p.add_argument("--raw", action="store_true", help="continue the text as it is, without the chat template")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; above 0: sampled at this temperature")
    p.add_argument("--seed", type=int, default=0, help="the sampling seed (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--max-seconds-per-token", type=float, default=10.0,
                   help="refuse a model read from its GGUF file (weights: quantised) that is expected to be slower "
                        "than this (default: %(default)s)")
    p.add_argument("--trace", metavar="FILE", help="write every reply's per-token records here (CSV, or .parquet)")
    p.add_argument("--layers", metavar="N", type=int, action="append", default=[],
                   help="with --once: after the reply, the top-1 of every layer for reply token N (repeatable)")
    p.add_argument("--no-tuned", action="store_true", help="the logit lens only, even where a tuned lens is trained")
    p.add_argument("--device", choices=setting_choices("device"), help="override the config's device")
    p.add_argument("--dtype", choices=setting_choices("dtype"), help="override the config's dtype")
    p.add_argument("-v", "--verbose", action="store_true", help="show the loader's progress messages")
    return p


def argument_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, found before any model is loaded, or None."""
    if args.max_new_tokens < 1:
        return "--max-new-tokens must be at least 1"
    if not math.isfinite(args.temperature) or args.temperature < 0:
        return f"--temperature must be a number, 0 or more (0: greedy), not {args.temperature}"
    if not 0 <= args.seed < 2**63:  # torch.manual_seed takes a 64-bit seed
        return f"--seed must be a whole number from 0 to {2**63 - 1}, not {args.seed}"
    if math.isnan(args.max_seconds_per_token) or args.max_seconds_per_token <= 0:
        return f"--max-seconds-per-token must be a number above 0, not {args.max_seconds_per_token}"
    if args.layers and args.once is None:
        return "--layers goes with --once (in a conversation, type /layers N after a reply)"
    if args.trace is not None:
        trace = Path(args.trace)
        if trace.is_dir():
            return f"--trace {args.trace}: a directory; give a file to write (CSV, or .parquet)"
        folder = trace.parent
        if not folder.is_dir():
            return f"--trace {args.trace}: folder {str(folder)!r} does not exist; make it or give another file"
        if not os.access(folder, os.W_OK) or (trace.exists() and not os.access(trace, os.W_OK)):
            return f"--trace {args.trace}: cannot be written here; give a file in a writable folder"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    wrong = argument_error(args)
    if wrong is not None:  # one line, before any model is loaded
        print(f"lens-chat: error: {wrong}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from workflow.lens.session import LensIdentityError  # torch: only after the arguments are checked

    try:
        chat = Chat(args)
        if args.once is not None:
            chat.reply([{"role": "user", "content": args.once}])
            for index in args.layers:
                print(f"\n{chat.layers(index)}", flush=True)
        else:
            chat.interactive()
    except (UserError, LensIdentityError) as error:
        print(f"lens-chat: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
