"""``report_to: [tensorboard]`` goes through accelerate's trackers, written by the main process and closed at
the end; metrics.jsonl stays the source of truth."""

from __future__ import annotations

import pytest

from alignkit.models import tiny_llama
from alignkit.train.loop import train
from tests.train.test_loop import make_config, read_metrics


def test_tensorboard_tracker_receives_the_logged_metrics(tmp_path, tokenizer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = make_config(tmp_path, "max_steps=2", "batch_size=2", "report_to=[tensorboard]")
    result = train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    events = list((result.output_dir / "trackers").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    losses = [e.value for e in accumulator.Scalars("train/loss")]
    expected = [m["loss"] for m in read_metrics(result.output_dir) if m["split"] == "train"]
    assert losses == pytest.approx(expected, rel=1e-6)
