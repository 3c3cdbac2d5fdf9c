"""TensorBoard tracking: scalars and tables land in event files; a resumed run replaces the steps it redoes."""

from cluster.outputs.tracking import Trackers


def read_scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)], events.Tags()


def test_resume_replaces_the_redone_steps_and_keeps_the_checkpointed_ones(tmp_path):
    first = Trackers.open(tmp_path, tensorboard=True, wandb_project="", config={}, first_step=0)
    for step in (1, 2, 3):
        first.scalars(step, {"train/reward_policy": float(step)})
    first.table(3, "eval_samples/greedy", ("prompt", "completion", "reward"), [("the plot", "was | fun .", 1.5)])
    first.close()  # a crash after step 3, with the newest checkpoint at step 2

    resumed = Trackers.open(tmp_path, tensorboard=True, wandb_project="", config={}, first_step=2)
    for step in (3, 4):
        resumed.scalars(step, {"train/reward_policy": 10.0 * step})
    resumed.close()

    points, tags = read_scalars(tmp_path / "tensorboard", "train/reward_policy")
    assert points == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert "eval_samples/greedy/text_summary" in tags["tensors"]
