"""Energy-based models as Pyro primitives: RBMs (Bernoulli, Gaussian, classification and conditional), DBMs, DBNs,
general Boltzmann machines, their negative-phase samplers and partition functions."""

from .boltzmann import BMParams, BoltzmannChains, BoltzmannDistribution, BoltzmannMachine
from .chains import ContrastiveDivergence, FastPersistentChains, NegativePhase, ParallelTempering, PersistentChains
from .conditional_rbm import ConditionalRBM, ConditionalRBMDistribution, CRBMParams
from .convolutional_rbm import ConvolutionalRBM, ConvolutionalRBMChains, ConvRBMParams
from .dbm import DBM, DBMParams
from .dbm_chains import DBMPersistentChains
from .dbm_distribution import DBMDistribution
from .dbn import DBN
from .dbn_updown import DBNUpDown, up_down
from .discriminative_rbm import ClassificationRBM, ClassificationRBMJoint, DiscriminativeRBM, JointParams
from .distribution import EnergyBasedDistribution
from .partition import (
    AISResult,
    ais_log_partition,
    ais_schedule,
    average_log_likelihood,
    exact_log_partition,
    reverse_ais_log_partition,
)
from .protocol import AnnealingPath, EnergyModel, Enumeration, FastWeightModel, FreeEnergyModel, HiddenInputModel
from .rbm import RBM, BernoulliRBM, GaussianBernoulliRBM, RBMParams
from .regularization import SparsityTarget, max_norm_
from .rnn_rbm import RNNRBM, RNNRBMFrameDistribution, RNNRBMParams
from .spike_slab_rbm import SpikeSlabParams, SpikeSlabRBM

__all__ = [
    "BoltzmannMachine",
    "BoltzmannChains",
    "BoltzmannDistribution",
    "BMParams",
    "RBM",
    "RBMParams",
    "BernoulliRBM",
    "GaussianBernoulliRBM",
    "ClassificationRBM",
    "DiscriminativeRBM",
    "ClassificationRBMJoint",
    "JointParams",
    "ConditionalRBM",
    "ConditionalRBMDistribution",
    "CRBMParams",
    "ConvolutionalRBM",
    "ConvolutionalRBMChains",
    "ConvRBMParams",
    "SpikeSlabRBM",
    "SpikeSlabParams",
    "RNNRBM",
    "RNNRBMFrameDistribution",
    "RNNRBMParams",
    "DBNUpDown",
    "up_down",
    "DBM",
    "DBN",
    "DBMParams",
    "DBMPersistentChains",
    "DBMDistribution",
    "SparsityTarget",
    "max_norm_",
    "NegativePhase",
    "PersistentChains",
    "FastPersistentChains",
    "ContrastiveDivergence",
    "ParallelTempering",
    "EnergyBasedDistribution",
    "AISResult",
    "ais_schedule",
    "exact_log_partition",
    "ais_log_partition",
    "reverse_ais_log_partition",
    "average_log_likelihood",
    "EnergyModel",
    "FreeEnergyModel",
    "HiddenInputModel",
    "FastWeightModel",
    "AnnealingPath",
    "Enumeration",
]
