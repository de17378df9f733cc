"""Integration: sentiment is linearly decodable from SmolLM2's residual stream, well above the control task."""

import pytest

from interp.data import load_labelled
from probes import probe_layers
from probes.regularization import DEFAULT_CS


@pytest.mark.slow
def test_sentiment_probe_on_smollm2(smol):
    texts, labels = load_labelled("builtin:sentiment")
    texts, labels = texts[:160], labels[:160]
    assert 64 <= sum(labels) <= 96  # the shipped file is shuffled, so any prefix is near balanced
    result = probe_layers(smol, texts, labels, points="resid_post:0,5,10,15,20,25,29", batch_size=25,
                          n_bootstrap=500, progress=False)
    best = result.metrics[result.best_point]
    print(f"\nbest {result.best_point}: {best}")
    for p in result.points:
        m = result.metrics[p]
        print(f"  {p}: acc {m['accuracy']:.3f} control {m['control_accuracy']:.3f} selectivity {m['selectivity']:.3f} "
              f"shuffled {m['shuffled_accuracy']:.3f} C {m['C']:g}")
        assert m["C"] in DEFAULT_CS
        assert m["selectivity"] == pytest.approx(m["accuracy"] - m["control_accuracy"])
    assert result.control["n_types_both_sides"] >= 20
    assert best["accuracy"] >= 0.8
    assert best["selectivity"] >= 0.2
    assert best["selectivity_ci"][0] > 0.0
    assert abs(best["shuffled_accuracy"] - 0.5) <= 0.2
