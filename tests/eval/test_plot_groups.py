"""Which chart of the HTML report a metric lands in."""

from alignkit.report.plots import ordered_groups


def test_metrics_are_grouped_by_what_they_measure():
    groups = dict(ordered_groups(["loss", "rewards/accuracies", "kl", "logratio_mixture_samples", "grad_norm",
                                  "tokens_per_second", "ranking_accuracy", "something_else"]))
    assert groups["KL and entropy"] == ["kl", "logratio_mixture_samples"]
    assert groups["Rewards"] == ["rewards/accuracies"]
    assert groups["Optimisation"] == ["grad_norm"]
    assert groups["Throughput"] == ["tokens_per_second"]
    assert groups["Ranking"] == ["ranking_accuracy"]
    assert groups["Other"] == ["something_else"]
