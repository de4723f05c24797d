"""Plots of Monte Carlo dropout uncertainty, following scikit-learn's Display pattern.

Every display is built in two steps, as :class:`sklearn.calibration.CalibrationDisplay`:

1. a class method (``from_predictions``, ``from_result``, ``from_scores`` or ``from_samples``)
   computes the plotted quantities with the functions of :mod:`mcdrop.metrics` and stores them
   as attributes of the display;
2. :meth:`plot` draws them on the given Matplotlib axes (or on a new figure), keeps the drawn
   artists (``line_``, ``bars_``, ...), the axes ``ax_`` and the figure ``figure_``, and
   returns the display.

The class methods call :meth:`plot` themselves, so ``Display.from_predictions(...)`` gives a
finished figure; call ``display.plot(ax=ax)`` again to redraw the stored data elsewhere. Pass the
same ``ax`` to several displays to compare models on one axes: each plot adds its own labelled
artists and refreshes the legend.

Matplotlib is imported only when something is drawn (``import mcdrop.plot`` does not import it),
and nothing here calls ``plt.show()``.

Displays
--------
They are grouped by task in :mod:`mcdrop.plot.classification`, :mod:`mcdrop.plot.ood`,
:mod:`mcdrop.plot.regression` and :mod:`mcdrop.plot.convergence`, on one shared base class
(axes, figure, names, legends and styles).

* :class:`ReliabilityDisplay` – reliability diagram with gap bars and a confidence histogram;
  :func:`plot_reliability_comparison` overlays several models.
* :class:`AccuracyRejectionDisplay` – accuracy on the retained examples against the fraction
  rejected as most uncertain.
* :class:`RiskCoverageDisplay` – selective (or generalised) risk against coverage, with the
  AURC and AUGRC in the legend.
* :class:`SparsificationDisplay` – mean error of the retained predictions as the most uncertain
  are removed, against the oracle; the AUSE in the legend.
* :class:`OODHistogramDisplay`, :class:`OODRocDisplay` – uncertainty scores of in- and
  out-of-distribution inputs: histograms and ROC curve.
* :class:`RegressionCalibrationDisplay` – expected against observed coverage of central
  predictive intervals.
* :class:`PredictiveBandsDisplay` – 1-D regression: mean with epistemic and total bands.
* :class:`ResidualStdDisplay` – absolute residuals against the predicted standard deviation.
* :class:`ConvergenceDisplay` – a metric, or the Monte Carlo standard error, against the
  number of samples ``T``.
"""

from mcdrop.plot._classification import (
    AccuracyRejectionDisplay,
    ReliabilityDisplay,
    plot_reliability_comparison,
)
from mcdrop.plot._convergence import ConvergenceDisplay
from mcdrop.plot._ood import OODHistogramDisplay, OODRocDisplay
from mcdrop.plot._regression import (
    PredictiveBandsDisplay,
    RegressionCalibrationDisplay,
    ResidualStdDisplay,
)
from mcdrop.plot._selective import RiskCoverageDisplay, SparsificationDisplay

__all__ = [
    "AccuracyRejectionDisplay",
    "ConvergenceDisplay",
    "OODHistogramDisplay",
    "OODRocDisplay",
    "PredictiveBandsDisplay",
    "RegressionCalibrationDisplay",
    "ReliabilityDisplay",
    "ResidualStdDisplay",
    "RiskCoverageDisplay",
    "SparsificationDisplay",
    "plot_reliability_comparison",
]
