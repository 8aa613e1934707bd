"""The progress bars of long commands (stderr, only on a terminal): one layout, honest ETA.

Long commands advance in uneven jumps (a cross-validation fold, a chunk of test examples, two
folds finishing together on two threads). rich's default time-remaining column divides by the
speed of the last 30 seconds, so a jump after minutes of silence showed "0:00:04" with most of
the work still ahead. Here the remaining time is the average rate since the bar started:
elapsed x (total - done) / done, shown once 2% is done and a few seconds have passed.
"""

from __future__ import annotations

import datetime

#: no estimate before this many seconds and this fraction of the work (the first ticks, e.g.
#: a few cheap curricula ahead of thousands of removals, say little about the rate)
ETA_MIN_ELAPSED = 2.0
ETA_MIN_DONE = 0.02


def eta_seconds(elapsed: float | None, done: float, total: float | None) -> float | None:
    """Seconds left at the average rate so far, or None when there is no estimate yet."""
    if not total or elapsed is None or elapsed < ETA_MIN_ELAPSED:
        return None
    if done <= 0 or done < ETA_MIN_DONE * total:
        return None
    return max(elapsed * (total - done) / done, 0.0)


def new_progress(console, get_time=None):
    """A transient rich Progress: description, bar, percentage, the average-rate ETA."""
    from rich.progress import BarColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn
    from rich.text import Text

    class AverageRateRemaining(ProgressColumn):
        max_refresh = 0.5

        def render(self, task) -> Text:
            left = None if task.finished else eta_seconds(task.elapsed, task.completed, task.total)
            shown = "-:--:--" if left is None else str(datetime.timedelta(seconds=round(left)))
            return Text(shown, style="progress.remaining")

    kw = {} if get_time is None else {"get_time": get_time}
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        AverageRateRemaining(),
        console=console,
        transient=True,
        **kw,
    )


def fraction_bar(label: str, enabled: bool, console_factory):
    """(advance(x) or None, stop()) of a bar over the fraction 0..1 of a job on the console
    ``console_factory()`` makes; (None, a no-op) when not enabled."""
    if not enabled:
        return None, lambda: None
    bar = new_progress(console_factory())
    bar.start()
    task = bar.add_task(label, total=1.0)
    return (lambda x: bar.advance(task, x)), bar.stop
