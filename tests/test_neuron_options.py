"""Neuron options are checked when assigned, as at construction, with errors that name the option."""

import dataclasses
import math

import pytest
import torch

from flashspike import neuron, surrogate
from flashspike import params as params_module
from flashspike.params import NeuronParams

NAN, INF = float("nan"), float("inf")

# (option, bad value, error type, words the message must hold)
BAD = [
    ("tau", -1.0, ValueError, "tau must be positive"),
    ("tau", 0.0, ValueError, "tau must be positive"),
    ("tau", NAN, ValueError, "tau must be a finite number"),
    ("tau", INF, ValueError, "tau must be a finite number"),
    ("tau", "2", TypeError, "tau must be a number"),
    ("v_threshold", NAN, ValueError, "v_threshold must be a finite number"),
    ("v_threshold", -INF, ValueError, "v_threshold must be a finite number"),
    ("v_threshold", None, TypeError, "v_threshold must be a number"),
    ("v_threshold", True, TypeError, "v_threshold must be a number"),
    ("v_reset", NAN, ValueError, "v_reset must be a finite number"),
    ("v_reset", INF, ValueError, "v_reset must be a finite number"),
    ("v_reset", "0", TypeError, "v_reset must be a number"),
    ("detach_reset", "yes", TypeError, "detach_reset must be True or False"),
    ("detach_reset", None, TypeError, "detach_reset must be True or False"),
    ("decay_input", 1, TypeError, "decay_input must be True or False"),
]

LIF_CLASSES = [neuron.LIFNode, neuron.MultiStepLIFNode]


@pytest.mark.parametrize("cls", LIF_CLASSES)
@pytest.mark.parametrize("option,value,error,words", BAD, ids=lambda v: repr(v) if not isinstance(v, type) else "")
def test_bad_option_refused_at_construction(cls, option, value, error, words):
    with pytest.raises(error, match=words):
        cls(**{option: value})


@pytest.mark.parametrize("cls", LIF_CLASSES)
@pytest.mark.parametrize("option,value,error,words", BAD, ids=lambda v: repr(v) if not isinstance(v, type) else "")
def test_bad_option_refused_on_assignment_and_nothing_changes(cls, option, value, error, words):
    node = cls()
    before, params = getattr(node, option), node.params()
    with pytest.raises(error, match=words):
        setattr(node, option, value)
    assert getattr(node, option) == before and node.params() is params


def test_good_values_are_accepted_and_take_effect():
    node = neuron.MultiStepLIFNode(backend="torch")
    node.tau = 4  # an int is a number
    assert node.tau == 4.0 and isinstance(node.tau, float) and node.params().tau == 4.0
    node.v_reset = None  # soft reset stays valid
    assert node.params().v_reset is None
    node.v_reset = -0.5
    node.v_threshold = 0.25
    node.detach_reset = True
    node.decay_input = False
    p = node.params()
    assert (p.v_reset, p.v_threshold, p.detach_reset, p.decay_input) == (-0.5, 0.25, True, False)
    np = pytest.importorskip("numpy")
    node.tau = np.float32(3.0)
    assert node.tau == 3.0 and type(node.tau) is float


def test_a_refused_tau_can_no_longer_silence_or_break_the_neuron():
    # Before the checks on assignment, tau = -1 gave a neuron that never fires and tau = 0 gave NaN.
    node = neuron.MultiStepLIFNode(backend="torch")
    for bad in (-1.0, 0.0):
        with pytest.raises(ValueError):
            node.tau = bad
    y = node(torch.full((3, 2), 2.0))
    assert y.sum() > 0 and not math.isnan(node.v.sum().item())


def test_if_nodes_check_their_options_too():
    node = neuron.MultiStepIFNode()
    with pytest.raises(ValueError, match="v_threshold"):
        node.v_threshold = NAN
    with pytest.raises(ValueError, match="v_reset"):
        neuron.IFNode(v_reset=INF)
    with pytest.raises(ValueError, match="known backends"):
        node.backend = "cuda"
    assert node.backend == "auto"


def test_assigning_the_same_value_keeps_the_cached_params():
    # The compiled path keys on the params object: an unchanged option must not rebuild it.
    node = neuron.MultiStepLIFNode()
    p = node.params()
    node.tau = 2.0
    node.v_threshold = 1.0
    node.reset()
    assert node.params() is p
    node.v_threshold = 0.5
    assert node.params() is not p and node.params().v_threshold == 0.5
    q = node.params()
    node.reset()  # back to 1.0, as SpikingJelly: the params follow
    assert node.params() is not q and node.params().v_threshold == 1.0


ORDERED = [  # (class, option, value that puts v_reset above v_threshold or v_rest)
    (neuron.MultiStepEIFNode, "v_reset", 5.0),
    (neuron.MultiStepEIFNode, "v_threshold", -1.0),
    (neuron.EIFNode, "v_rest", -1.0),
    (neuron.QIFNode, "v_rest", -5.0),
    (neuron.QIFNode, "v_reset", 2.0),
]


@pytest.mark.parametrize("cls,option,value", ORDERED, ids=lambda v: getattr(v, "__name__", repr(v)))
def test_eif_and_qif_keep_reset_below_threshold_and_rest_on_assignment(cls, option, value):
    words = "needs v_threshold > v_reset and v_rest >= v_reset"
    with pytest.raises(ValueError, match=words):
        cls(**{option: value})
    node = cls()
    before, params = getattr(node, option), node.params()
    with pytest.raises(ValueError, match=words):
        setattr(node, option, value)
    assert getattr(node, option) == before and node.params() is params
    if option != "v_rest":  # a memory: what reset() restores is held to the same rule
        with pytest.raises(ValueError, match=words):
            node.set_reset_value(option, value)
        node.reset()
        assert getattr(node, option) == before
    if option != "v_reset":
        node.v_reset = None  # soft reset: no order to keep
        setattr(node, option, value)


@pytest.mark.parametrize("value", [NAN, INF, "1", None])
def test_a_reset_value_of_an_option_is_checked(value):
    node = neuron.MultiStepLIFNode()
    with pytest.raises((ValueError, TypeError), match="v_threshold must be a"):
        node.set_reset_value("v_threshold", value)
    node.v_threshold = 0.5
    node.reset()
    assert node.v_threshold == 1.0 and node.params().v_threshold == 1.0
    node.set_reset_value("v_reset", None)  # None is a valid v_reset (soft reset)
    node.reset()
    assert node.v_reset is None


@pytest.mark.parametrize("value", ["no", 1, None])
def test_store_v_seq_must_be_a_bool(value):
    with pytest.raises(TypeError, match="store_v_seq must be True or False"):
        neuron.MultiStepLIFNode(store_v_seq=value)
    node = neuron.MultiStepLIFNode(backend="torch")
    with pytest.raises(TypeError, match="store_v_seq must be True or False"):
        node.store_v_seq = value
    node(torch.ones(2, 3))
    assert node.store_v_seq is False and node.__dict__["v_seq"] is None


@pytest.mark.parametrize("cls", [neuron.MultiStepEIFNode, neuron.QIFNode])
@pytest.mark.parametrize("option", ["v_threshold", "v_reset", "v_rest"])
def test_eif_and_qif_name_an_option_of_the_wrong_type(cls, option):
    with pytest.raises(TypeError, match=f"{option} must be a number, got '1'"):
        cls(**{option: "1"})


# Every neuron kind with fused kernels, and a valid value for each option its kind reads (off its default).
KIND_NODES = {"if": neuron.MultiStepIFNode, "lif": neuron.MultiStepLIFNode, "plif": neuron.MultiStepParametricLIFNode,
              "eif": neuron.MultiStepEIFNode}
GOOD = {"v_threshold": 0.75, "v_reset": -0.05, "detach_reset": True, "surrogate_function": surrogate.ATan(3.0),
        "tau": 3.5, "decay_input": False, "delta_T": 0.5, "theta_rh": 0.6, "v_rest": 0.02}


@pytest.mark.parametrize("kind", params_module.KINDS)
def test_every_declared_option_of_a_kind_is_checked_on_assignment_and_reaches_the_params(kind):
    """Options are declared once, in NeuronParams: what a node checks, and what its params() read, follow
    from that declaration for every kind, so an option declared there cannot be left unchecked or unread."""
    read = [f for f in dataclasses.fields(NeuronParams) if f.init and not f.metadata["sets_kind"]
            and (f.metadata["kinds"] is None or kind in f.metadata["kinds"])]
    attributes = {f.metadata["attribute"] or f.name: f.name for f in read}
    assert set(attributes) <= set(GOOD), "give the new option a valid value in GOOD"
    node = KIND_NODES[kind](backend="torch")
    assert node.params().kind == kind
    for attribute, field_name in attributes.items():
        with pytest.raises((TypeError, ValueError), match=attribute):
            setattr(node, attribute, "not a value")
        setattr(node, attribute, GOOD[attribute])
        assert getattr(node.params(), field_name) == GOOD[attribute]
    p = node.params()
    rebuilt = NeuronParams.from_text(p.text)
    assert rebuilt == p and rebuilt.key == p.key and rebuilt.text == p.text
    # options its kind does not read are not the node's: they stay unchecked and out of its params
    for f in dataclasses.fields(NeuronParams):
        if f.init and not f.metadata["sets_kind"] and f not in read:
            assert getattr(p, f.name) == f.default
