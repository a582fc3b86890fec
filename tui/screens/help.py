"""The help screen: how to run an audit with the keyboard, and every screen's keys."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Markdown

QUICK_START = """\
# edge-audit: does compression make the model more biased?

**Quick start, keyboard only** (tab moves between fields, enter opens a list or presses a button;
the screen keys `1`…`6`, `q` and `?` type into a text field while you are in one: tab out first):

1. **Models** (`1`): the default model loads when the app opens. Pick another with the arrows
   and enter, or type a folder, `.gguf` file or hub id.
2. **Compress** (`2`): the form starts at *wanda*, sparsity *0.5*. Press `ctrl+r`: the loaded
   model is pruned into the variant *wanda-50* (the blocks fill in as it goes; `esc` cancels).
3. **Probe** (`3`): with *every model* and suite *builtin*, press `ctrl+r`: the baseline and
   each variant get perplexity, the bias probes (figures update as items are scored) and a
   latency profile. *Limit* scores fewer items per category for a quick look.
4. **Compare** (`4`): baseline and variants side by side. Green is better, red worse than the
   baseline; `±` reaches to the far end of a figure's 95% interval, and `*` marks an SRS change
   whose interval excludes 0. The banner is the gate's
   verdict in words: *✔ MAY SHIP*, *✖ DO NOT SHIP* (a rule's one-sided 95% confidence bound is
   past its limit), *? NOT ENOUGH EVIDENCE* (the bounds straddle a limit: about how many more
   items would settle it) or *⚠ TOO DEGRADED TO JUDGE*. `v` lists every finding in words,
   with its bound and its limit. A variant too degraded to judge (its
   answers not shown better than chance, or its accuracy fallen or its unparsed answers grown
   past the gate's limits) has its bias figures shown, but not read.
   `←` `→` choose a variant, `d` shows its categories and the items that flipped to the
   bias-aligned answer. Below, SRS, transitions and perplexity against sparsity, one line per
   method with each point's 95% interval (`c` shows the next chart where only one fits).
5. **History** (`5`): every run in the results store; open one, continue it (`c`), export its
   report, run a plan. Mark two runs with `m` (a `●` shows the mark) and press `d`: their
   figures side by side, and whether they were probed with the same settings. Below the runs,
   the field checks done on this device.
6. **Check** (`6`), in the field: give the deployed model folder, the audit record (REC.json)
   from the lab and the lab's public key, press `ctrl+r`. The folder is fingerprinted, the
   record's items and text are replayed, the model is timed here; the verdict is one sentence,
   green *✔ CLEARED TO SHIP* or red *✖ DO NOT SHIP*. `d` shows what each of the five steps found.

Everything is recorded as a run in the results store, the same as `edge-audit run`; `ctrl+s`
saves this session as a plan file that `edge-audit run PLAN` repeats headless.
"""

KEYS = """\
## Keys

| where | key | does |
|---|---|---|
| everywhere | `1`…`6` | Models, Compress, Probe, Compare, History, Check |
| | `?` | this help |
| | `esc` | cancel the running job (steps already finished stay stored) |
| | `ctrl+s` | save the session as a plan file |
| | `q`, `ctrl+q` | quit (asks first while a job runs) |
| Models | `enter` | load the model under the cursor, or the one typed |
| Compress | `ctrl+r` | compress into a new variant |
| Probe | `ctrl+r` | run the probe (and perplexity, profile) on the chosen model(s); "Stop early": a variant's probe ends once the gate's verdicts settle |
| Compare | `v` | why the verdict: every finding, with its bound and its limit |
| | `d` or `enter` | the chosen variant's categories and flipped items |
| | `e` | export the report (Markdown, HTML, JSON) |
| | `s` / `b` | next probe suite / back to this session's run |
| | `c` | next chart (at 80x24, one chart shows at a time) |
| Variant | `c` / `f` / `esc` | categories / flipped items / back |
| History | `enter` or `o` | open the run as a comparison |
| | `c` | continue the run: its model loaded, new steps added to it |
| | `e` / `p` | export its report / run a plan file |
| | `m` or `space` | mark the run, or take its mark off (two at a time: a third mark replaces the oldest) |
| | `d` | the two marked runs side by side, older first, and whether their probe settings match |
| Runs side by side | `esc` | back to History |
| History, field checks | `enter` or `o` | show the check's verdict and steps on screen 6 |
| Check | `ctrl+r` | check the folder against the record |
| | `d` | show or hide what each step found |

## What the numbers are

*SRS*: share of bias-aligned answers on ambiguous items (chance is about 1/3).
*s_AMB*, *s_DIS*: BBQ bias scores (0 is unbiased). *→ biased*: items the baseline answered
without bias that the variant answers bias-aligned, over those items; *→ unbiased* the other
way. *acc amb*, *acc dis*: accuracy on ambiguous and disambiguated items. Intervals in
brackets are 95%. *perplexity*: on a held-out text, the same tokens for every variant.
*ms/token p50*: decode time per generated token; *peak RSS*: memory while profiling (both
from the profile). *verdict*: the gate's word on a variant: may ship, do not ship, not
settled, too degraded (to judge).
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, mode: str | None = None) -> None:
        super().__init__()
        self.mode = mode

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Markdown(QUICK_START + "\n" + KEYS)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#help").focus()

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
