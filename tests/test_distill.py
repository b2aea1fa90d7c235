"""sparsekit.distill: loss terms against hand-computed values, the loop with pruners, errors, text helpers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit
from sparsekit.distill import (KL, MSE, Cosine, Hidden, Pair, Task, call_model, distill, docstring_text,
                               prune_and_distill, reference_text, split_labels)
from sparsekit.prune import ConstantSparsity, PolynomialDecay, Pruner


def _mlp(seed: int = 0, hidden: int = 16) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def _data(n: int = 4, rows: int = 16, seed: int = 1) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, 6, generator=gen) for _ in range(n)]


class TupleOut(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.body = _mlp(seed)

    def forward(self, x):
        y = self.body(x)
        return y, y.sum(-1), torch.zeros(1, dtype=torch.long)


class FakeHF(nn.Module):
    """Hugging Face style: forward(input_ids, attention_mask) -> dict with logits and hidden states."""

    def __init__(self, vocab: int = 11, width: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(20, width)
        self.layer = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids, attention_mask=None):
        h = torch.tanh(self.layer(self.emb(input_ids)))
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1)
        return {"logits": self.head(h), "last_hidden_state": h, "mask": attention_mask}


class FakeSentenceTransformer(nn.Module):
    """sentence-transformers style: forward(features: dict) writes its outputs into the dict it gets."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.inner = FakeHF(seed=seed)

    def forward(self, features):
        out = self.inner(features["input_ids"], features["attention_mask"])
        features.update(token_embeddings=out["last_hidden_state"],
                        sentence_embedding=out["last_hidden_state"].mean(1))
        return features


def _token_batches(n: int = 3):
    gen = torch.Generator().manual_seed(5)
    return [{"input_ids": torch.randint(0, 20, (4, 7), generator=gen), "attention_mask": torch.ones(4, 7, dtype=torch.long)}
            for _ in range(n)]


# -- loss terms against hand-computed values ---------------------------------

def test_mse_default_matches_every_float_output(torch_seed):
    s = {"a": torch.randn(3, 4), "b": (torch.randn(2), torch.ones(2, dtype=torch.long))}
    t = {"a": torch.randn(3, 4), "b": (torch.randn(2), torch.zeros(2, dtype=torch.long))}
    want = (((s["a"] - t["a"]) ** 2).mean() + ((s["b"][0] - t["b"][0]) ** 2).mean()) / 2
    assert MSE()(Pair(s, t)).item() == pytest.approx(want.item(), rel=1e-6)
    assert MSE(key=("b", 0))(Pair(s, t)).item() == pytest.approx(((s["b"][0] - t["b"][0]) ** 2).mean().item())


def test_cosine_and_kl_hand_computed(torch_seed):
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    cos = torch.tensor([(a @ b) / (a.norm() * b.norm()) for a, b in zip(s, t)])
    assert Cosine()(Pair(s, t)).item() == pytest.approx((1 - cos).mean().item(), rel=1e-5)
    temp = 2.0
    p = torch.softmax(t / temp, -1)
    q = torch.softmax(s / temp, -1)
    want = (p * (p.log() - q.log())).sum(-1).mean() * temp ** 2
    assert KL(temperature=temp)(Pair(s, t)).item() == pytest.approx(want.item(), rel=1e-5)
    # 3-D logits: averaged over every position
    s3, t3 = s.reshape(1, 5, 4), t.reshape(1, 5, 4)
    assert KL(key="logits", temperature=temp)(Pair({"logits": s3}, {"logits": t3})).item() == pytest.approx(want.item(), rel=1e-5)


def test_task_term_and_label_split():
    x, y = torch.zeros(2, 3), torch.tensor([0, 2])
    rest, labels = split_labels((x, y), [-1])
    assert rest[0] is x and labels[-1] is y
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    term = Task(F.cross_entropy, label=-1)
    assert term(Pair(logits, logits, labels={-1: y})).item() == pytest.approx(F.cross_entropy(logits, y).item())
    rest, labels = split_labels({"input_ids": x, "labels": y}, ["labels"])
    assert list(rest) == ["input_ids"] and labels["labels"] is y


def test_hidden_projection_learns_and_is_seeded(torch_seed):
    term = Hidden("a", "b")
    s, t = torch.randn(4, 3), torch.randn(4, 5)
    pair = Pair(None, None, {"a": s}, {"b": t})
    first = term(pair)
    assert len(term.parameters()) == 2 and term.projection.weight.shape == (5, 3)
    proj = term.projection
    assert first.item() == pytest.approx(F.mse_loss(proj(s), t).item(), rel=1e-6)
    other = Hidden("a", "b")
    other(pair)
    assert torch.equal(other.projection.weight, proj.weight)  # same init whatever the global seed
    with pytest.raises(ValueError, match="widths 3 and 5"):
        Hidden("a", "b", project=False)(pair)
    assert Hidden("a", "b", loss="cosine")(Pair(None, None, {"a": t}, {"b": t})).item() == pytest.approx(0.0, abs=1e-6)


def test_call_model_rule_and_copies_dicts():
    seen = []
    f = lambda *a, **k: seen.append((a, k)) or 0  # noqa: E731
    call_model(f, torch.ones(1))
    call_model(f, [1, 2])
    call_model(f, {"a": 1})
    feats = {"x": 1}
    call_model(lambda d: d.update(y=2), (feats,))
    assert [len(a) for a, _ in seen] == [1, 2, 0] and seen[2][1] == {"a": 1} and feats == {"x": 1}
    with pytest.raises(TypeError, match="1-tuples"):
        call_model(f, "text")


# -- the loop -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tensor", "tuple", "dict"])
def test_default_mse_loss_falls(kind, torch_seed):
    make = {"tensor": _mlp, "tuple": TupleOut, "dict": FakeHF}[kind]
    teacher, student = make(seed=0), make(seed=1)
    data = _token_batches(2) if kind == "dict" else _data(2)
    hist = distill(student, teacher, data, steps=30, lr=1e-2, progress=False)
    assert len(hist) == 30 and len(hist.steps) == 30 and hist.steps[-1]["step"] == hist["step"][-1] == 30
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert hist["loss"] == hist["loss/mse"] and hist["sparsity"][0] == 0.0


def test_pruner_schedule_followed_and_masks_enforced(torch_seed):
    teacher, student = _mlp(), _mlp()
    pruner = Pruner(student, PolynomialDecay(0.0, 0.75, begin_step=0, end_step=8, frequency=2))
    hist = distill(student, teacher, _data(), steps=12, pruner=pruner, lr=1e-2, progress=False)
    assert pruner.optimizer is not None  # distill's AdamW, so pruned Adam moments are zeroed
    sp = hist["sparsity"]
    assert sp == sorted(sp) and sp[-1] == pytest.approx(0.75) and sp[0] < 0.75
    for name, mask in pruner.masks.items():
        w = student.get_parameter(name)
        assert torch.all(w[~mask] == 0)
    assert hist["loss"][-1] < hist["loss"][4]  # recovers once the schedule is done


@pytest.mark.parametrize("method", ["movement", "taylor"])
def test_gradient_criteria(method, torch_seed):
    teacher, student = _mlp(), _mlp(seed=2)
    pruner = Pruner(student, ConstantSparsity(0.5, begin_step=2, frequency=100), method=method)
    hist = distill(student, teacher, _data(), steps=4, pruner=pruner, lr=1e-2, progress=False)
    assert hist["sparsity"][:1] == [0.0] and hist["sparsity"][-1] == pytest.approx(0.5)
    assert pruner.criterion.batches >= 1  # fed with gradients after the update at step 2


def test_accumulation_equals_full_batch_sgd(torch_seed):
    teacher = _mlp()
    full = _data(n=1, rows=16)
    halves = [full[0][:8], full[0][8:]]
    a, b = _mlp(seed=3), _mlp(seed=3)
    distill(a, teacher, full, steps=1, optimizer=torch.optim.SGD(a.parameters(), lr=0.1), progress=False)
    hist = distill(b, teacher, halves, steps=1, accumulate=2, optimizer=torch.optim.SGD(b.parameters(), lr=0.1),
                   progress=False)
    assert len(hist) == 1
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_cached_teacher_gives_same_losses(torch_seed):
    calls = []
    teacher = _mlp()
    teacher.register_forward_hook(lambda *a: calls.append(1))
    data = _data(n=2)
    a, b = _mlp(seed=4), _mlp(seed=4)
    h1 = distill(a, teacher, data, steps=6, lr=1e-2, progress=False)
    n_plain = len(calls)
    h2 = distill(b, teacher, data, steps=6, lr=1e-2, cache_teacher=True, progress=False)
    assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-6)
    assert n_plain == 6 and len(calls) - n_plain == 2


def test_nan_stops_names_step_and_keeps_weights(torch_seed):
    teacher, student = _mlp(), _mlp(seed=5)
    data = _data(n=3)
    data[2] = data[2].clone()
    data[2][0, 0] = float("nan")
    snapshots = []
    with pytest.raises(FloatingPointError, match="step 3"):
        distill(student, teacher, data, steps=5, lr=1e-2, progress=False,
                on_step=lambda s, l: snapshots.append(copy.deepcopy(student.state_dict())))
    assert len(snapshots) == 2
    for k, v in student.state_dict().items():
        assert torch.equal(v, snapshots[-1][k])


def test_hidden_terms_in_the_loop_with_projection(torch_seed):
    teacher, student = _mlp(hidden=24), _mlp(seed=1, hidden=16)
    loss = [MSE(), Hidden("0", "0", weight=0.5), Hidden("2", project=True, loss="cosine", weight=0.1)]
    hist = distill(student, teacher, _data(), steps=20, loss=loss, lr=1e-2, progress=False)
    assert loss[1].projection is not None and loss[1].projection.weight.shape == (24, 16)
    assert hist["loss/hidden[0]"][-1] < hist["loss/hidden[0]"][0]
    assert set(hist.steps[0]) >= {"loss/mse", "loss/hidden[0]", "loss/hidden[2]", "grad_norm", "lr"}


def test_kl_and_task_terms_with_labelled_batches(torch_seed):
    teacher, student = _mlp(), _mlp(seed=1)
    gen = torch.Generator().manual_seed(0)
    data = [(x, torch.randint(0, 3, (len(x),), generator=gen)) for x in _data()]
    loss = [KL(temperature=2.0), Task(F.cross_entropy, label=-1, weight=0.5)]
    hist = distill(student, teacher, data, steps=15, loss=loss, lr=1e-2, progress=False)
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist["loss"][0] == pytest.approx(hist["loss/kl"][0] + 0.5 * hist["loss/task"][0], rel=1e-6)


def test_hf_dict_and_sentence_transformers_inputs(torch_seed):
    teacher, student = FakeHF(), FakeHF(seed=1)
    hist = distill(student, teacher, _token_batches(), steps=3, loss=[KL(), Cosine(key="last_hidden_state")],
                   lr=1e-2, progress=False)
    assert len(hist) == 3
    batches = [(b,) for b in _token_batches()]
    before = [dict(b[0]) for b in batches]
    st_teacher, st_student = FakeSentenceTransformer(), FakeSentenceTransformer(seed=1)
    hist = distill(st_student, st_teacher, batches, steps=20, lr=1e-2, progress=False)
    assert hist["loss"][-1] < hist["loss"][0]
    assert [list(b[0]) for b in batches] == [list(b) for b in before]  # batches not written into


def test_validation_early_stop_and_restore_best(torch_seed):
    teacher, student = _mlp(), _mlp(seed=1)
    values = iter([1.0, 3.0, 2.0, 2.5, 2.0, 9.0])
    seen_modes = []

    def validate(model):
        seen_modes.append(model.training)
        return next(values)

    hist = distill(student, teacher, _data(), steps=12, validate=validate, every=2, patience=2, lr=1e-2,
                   restore_best=True, progress=False)
    assert hist.stopped_early and len(hist) == 8 and hist.best_epoch == 4 and hist.best_value == 3.0
    assert [v["step"] for v in hist.validations] == [2, 4, 6, 8] and seen_modes == [False] * 4
    assert student.training and hist.to_dict()["validations"][1]["value"] == 3.0


def test_progress_bar_runs(torch_seed, capsys):
    distill(_mlp(seed=1), _mlp(), _data(1), steps=2, progress=True)
    assert "distill" in capsys.readouterr().err


# -- bad input --------------------------------------------------------------------

def _no_step_optimizer(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def fail(*a, **k):
        raise AssertionError("optimizer stepped before the mismatch was reported")
    opt.step = fail
    return opt


@pytest.mark.parametrize("teacher, loss, match", [
    (nn.Sequential(nn.Linear(6, 4)), None, r"shape \(16, 3\) != teacher shape \(16, 4\)"),
    (TupleOut(), None, "differ in structure"),
    (nn.Sequential(nn.Linear(6, 5)), KL(), "vocab size"),
    (_mlp(), Hidden("nope"), "no module"),
    (_mlp(), MSE(key="logits"), "no item 'logits'"),
])
def test_mismatched_teacher_reported_before_any_step(teacher, loss, match, torch_seed):
    student = _mlp(seed=1)
    with pytest.raises(ValueError, match=match):
        distill(student, teacher, _data(), steps=3, loss=loss, optimizer=_no_step_optimizer(student), progress=False)


def test_argument_errors(torch_seed):
    s, t = _mlp(), _mlp(seed=1)
    with pytest.raises(ValueError, match="steps"):
        distill(s, t, _data(), steps=0)
    with pytest.raises(ValueError, match="no batches"):
        distill(s, t, [], steps=1, progress=False)
    with pytest.raises(ValueError, match="only once"):
        distill(s, t, iter(_data(1)), steps=2, progress=False)
    with pytest.raises(TypeError, match="iterable of batches"):
        distill(s, t, torch.zeros(4, 6), steps=1)
    with pytest.raises(ValueError, match="teacher is the student"):
        distill(s, s, _data(), steps=1)
    with pytest.raises(ValueError, match="another model"):
        distill(s, t, _data(), steps=1, pruner=Pruner(_mlp(), 0.5))
    with pytest.raises(ValueError, match="accumulate"):
        distill(s, t, _data(), steps=1, accumulate=0)
    with pytest.raises(TypeError, match="Term"):
        distill(s, t, _data(), steps=1, loss=[F.mse_loss])
    with pytest.raises(ValueError, match="weight"):
        MSE(weight=-1)


def test_eval_mode_and_frozen_parameters_are_reported(torch_seed):
    s, t = _mlp(), _mlp(seed=1)
    s.eval()
    with pytest.warns(UserWarning, match="eval mode"):
        distill(s, t, _data(1), steps=1, progress=False)
    assert not s.training  # mode put back
    s.train()
    s[0].weight.requires_grad_(False)
    frozen = s[0].weight.detach().clone()
    with pytest.warns(UserWarning, match="1 of 4 student parameters are frozen"):
        distill(s, t, _data(1), steps=2, lr=1e-2, progress=False)
    assert torch.equal(s[0].weight, frozen)
    for p in s.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="every parameter of the student is frozen"):
        distill(s, t, _data(1), steps=1, progress=False)


# -- recipe -------------------------------------------------------------------------

@pytest.mark.parametrize("granularity", ["unstructured", (4, 1), "2:4"])
def test_prune_and_distill_mlp(granularity, torch_seed):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    data = [torch.randn(16, 8) for _ in range(3)]
    out, hist = prune_and_distill(model, data, sparsity=0.5, granularity=granularity, steps=9, lr=1e-3,
                                  return_history=True, progress=False)
    assert out is model and [n for n, _ in model.named_buffers()] == []
    for layer in (model[0], model[2]):
        assert float((layer.weight == 0).float().mean()) == pytest.approx(0.5)
    assert hist["sparsity"][-1] == pytest.approx(0.5) and hist["sparsity"][5] == pytest.approx(0.5)


def test_prune_and_distill_cnn_and_transformer_defaults(torch_seed):
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.LazyLinear(4))
    imgs = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    cnn(imgs[0])
    prune_and_distill(cnn, imgs, steps=4, method="movement", progress=False)
    assert sparsekit.sparsity_report(cnn).total["sparsity"] == pytest.approx(0.8, abs=0.01)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1, enable_nested_tensor=False)
    seqs = [torch.randn(2, 5, 16) for _ in range(2)]
    prune_and_distill(enc, seqs, steps=3, progress=False)
    lin = enc.layers[0].linear1.weight
    assert float((lin == 0).float().mean()) == pytest.approx(0.8, abs=0.01)


def test_prune_and_distill_tokenizes_strings(torch_seed):
    class Tokenizing(FakeSentenceTransformer):
        def tokenize(self, texts):
            ids = torch.tensor([[len(w) % 20 for w in t.split()[:6]] for t in texts])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    texts = (t for t in reference_text(8, min_words=6))  # a one-shot generator of strings
    model = prune_and_distill(Tokenizing(), texts, sparsity=0.5, steps=3, batch_size=4, progress=False)
    assert float((model.inner.layer.weight == 0).float().mean()) == pytest.approx(0.5)
    with pytest.raises(TypeError, match="tokenizer"):
        prune_and_distill(_mlp(), ["some text"], steps=2)


# -- text -----------------------------------------------------------------------------

def test_text_helpers_deterministic_disjoint_filtered():
    train, held = reference_text(), docstring_text()
    assert len(train) > 300 and len(held) > 300
    assert train == reference_text() and held == docstring_text()
    assert len(set(train)) == len(train) and len(set(held)) == len(held)
    assert set(train).isdisjoint(held)
    for s in train[:200] + held[:200]:
        assert 8 <= len(s.split()) <= 60 and s[0].isupper() and s[-1] in ".!?"
    short = reference_text(50, min_words=3, max_words=10)
    assert all(3 <= len(s.split()) <= 10 for s in short) and len(short) == 50
    paras = reference_text(5, unit="paragraph", max_words=200)
    assert len(paras) == 5 and all(len(p.split()) >= 8 for p in paras)
    with pytest.raises(ValueError, match="min_words"):
        reference_text(min_words=10, max_words=5)
    assert set(docstring_text(modules=("json",))) < set(held)


# -- padding ------------------------------------------------------------------------

def _padded_pair(seed: int = 0):
    """Token outputs (2 sentences x 4 positions x 3 features) whose padded positions differ wildly."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    s, t = torch.randn(2, 4, 3, generator=gen), torch.randn(2, 4, 3, generator=gen)
    s_pad = s.clone()
    s_pad[mask == 0] = 1e3  # what a student computes at pads must not matter
    return mask, s, s_pad, t


@pytest.mark.parametrize("wrap", ["dict", "sentence-transformers"])
def test_losses_average_token_outputs_over_real_tokens(wrap):
    mask, s, s_pad, t = _padded_pair()
    real = mask.bool()
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": mask}
    batch = batch if wrap == "dict" else (batch,)
    want_mse = ((s[real] - t[real]) ** 2).mean()
    want_cos = (1 - F.cosine_similarity(s[real], t[real], dim=-1)).mean()
    pooled_s, pooled_t = s.mean(1), t.mean(1)  # (batch, dim): not token-shaped, plain mean
    pair = Pair({"tok": s_pad, "emb": pooled_s}, {"tok": t, "emb": pooled_t}, batch=batch)
    assert MSE(key="tok")(pair).item() == pytest.approx(want_mse.item(), rel=1e-6)
    assert Cosine(key="tok")(pair).item() == pytest.approx(want_cos.item(), rel=1e-6)
    assert MSE(key="emb")(pair).item() == pytest.approx(((pooled_s - pooled_t) ** 2).mean().item(), rel=1e-6)
    want_default = (want_mse + ((pooled_s - pooled_t) ** 2).mean()) / 2
    assert MSE()(pair).item() == pytest.approx(want_default.item(), rel=1e-6)
    hidden = Pair(None, None, {"0": s_pad}, {"0": t}, batch=batch)
    assert Hidden("0")(hidden).item() == pytest.approx(want_mse.item(), rel=1e-6)
    assert Hidden("0", loss="cosine")(hidden).item() == pytest.approx(want_cos.item(), rel=1e-6)
    # without a mask every position counts, pads included
    assert MSE(key="tok")(Pair({"tok": s_pad}, {"tok": t})).item() > 1e4


def test_padding_does_not_change_the_distillation_loss(torch_seed):
    """One batch with two sentences padded to 7 tokens trains exactly like the same batch padded to 5."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 20, (2, 5), generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    short = {"input_ids": ids, "attention_mask": mask}
    long = {"input_ids": torch.cat([ids, torch.zeros(2, 2, dtype=torch.long)], 1),
            "attention_mask": torch.cat([mask, torch.zeros(2, 2, dtype=torch.long)], 1)}
    losses = []
    for batch in (short, long):
        teacher, student = FakeHF(), FakeHF(seed=1)
        hist = distill(student, teacher, [batch], steps=3, loss=[MSE(key="last_hidden_state"), Cosine(key="logits")],
                       optimizer=torch.optim.SGD(student.parameters(), lr=0.1), progress=False)
        losses.append(hist["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


# -- teacher cache --------------------------------------------------------------------

class _Reshuffled:
    """Yields the same batches in a new order every pass, and once a changed batch of the same shape."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        order = list(range(len(self.batches)))
        if self.passes % 2 == 0:
            order.reverse()
        for i in order:
            b = self.batches[i]
            yield b + 1.0 if (self.passes == 3 and i == 0) else b


def test_teacher_cache_is_keyed_by_batch_contents(torch_seed):
    teacher = _mlp()
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    losses = []
    for cache in (False, True):
        student = _mlp(seed=4)
        hist = distill(student, teacher, _Reshuffled(_data(n=3)), steps=12, lr=1e-2, cache_teacher=cache,
                       progress=False)
        losses.append(hist["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)  # never a wrong (stale or reordered) output
    assert len(calls) == 12 + 4  # cached: 3 batches, reversed order reused, and the changed batch recomputed


def test_teacher_runner_recomputes_a_batch_changed_in_place():
    runner = sparsekit.distill.TeacherRunner(nn.Linear(3, 2), cache=True)
    x = torch.ones(4, 3)
    first, _ = runner(x)
    x[2, 1] = 5.0  # same shape, same object, other values
    second, _ = runner(x)
    assert not torch.equal(first, second) and (runner.hits, runner.misses) == (0, 2)
    assert runner(x.clone())[0] is second and runner.hits == 1
    bf = torch.ones(2, 3, dtype=torch.bfloat16)
    assert sparsekit.distill.batch_fingerprint({"a": bf}) != sparsekit.distill.batch_fingerprint({"a": bf * 2})


# -- recipe: one-shot starts, calibration, failure ----------------------------------------

def test_prune_and_distill_from_a_one_shot_start_keeps_its_masks(torch_seed):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    data = [torch.randn(16, 8) for _ in range(3)]
    oneshot = copy.deepcopy(model)
    sparsekit.prune(oneshot, 0.5, method="wanda", calibration=data, permanent=True)
    out, hist = prune_and_distill(model, data, sparsity=0.5, one_shot="wanda", steps=5, lr=1e-2,
                                  return_history=True, progress=False)
    for i in (0, 2):
        assert torch.equal(out[i].weight == 0, oneshot[i].weight == 0)  # same mask, default calibration
        assert not torch.equal(out[i].weight, oneshot[i].weight)  # kept weights trained
    assert hist["sparsity"] == pytest.approx([0.5] * 5)
    prune_and_distill(nn.Linear(8, 8), data, sparsity=0.5, method="sparsegpt", steps=3, progress=False)
    with pytest.raises(ValueError, match="calibration"):
        prune_and_distill(nn.Linear(8, 8), data, steps=3, calibration=data, progress=False)


class _FailAt(MSE):
    def __init__(self, call: int) -> None:
        super().__init__()
        self.calls, self.fail_at = 0, call

    def __call__(self, pair):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return super().__call__(pair)


@pytest.mark.parametrize("one_shot", [None, "magnitude"])
def test_prune_and_distill_failure_leaves_the_model_as_it_was(one_shot, torch_seed):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    sparsekit.prune(model[2], 0.25)  # a mask the user attached before: it stays
    before = copy.deepcopy(model.state_dict())
    was_masked = sparsekit.prune.get_mask(model[2]).clone()
    data = [torch.randn(16, 8) for _ in range(3)]
    with pytest.raises(RuntimeError, match="boom"):
        prune_and_distill(model, data, sparsity=0.5, steps=9, one_shot=one_shot, loss=_FailAt(6), lr=1e-2,
                          progress=False)
    assert sparsekit.prune.get_mask(model[0]) is None and len(model[0]._forward_pre_hooks) == 0
    assert torch.equal(sparsekit.prune.get_mask(model[2]), was_masked)
    assert model.training and set(model.state_dict()) == set(before)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="steps"):
        prune_and_distill(model, data, steps=0)
    assert sparsekit.prune.get_mask(model[0]) is None


# -- history ----------------------------------------------------------------------------

def test_distill_history_records_steps_and_stays_a_history(torch_seed):
    hist = distill(_mlp(seed=1), _mlp(), _data(), steps=3, lr=1e-2, progress=False)
    assert isinstance(hist, sparsekit.prune.History)
    assert [r["step"] for r in hist.steps] == [1, 2, 3] and hist.epochs is hist.steps and len(hist) == 3
    assert hist["loss"] == [r["loss"] for r in hist.steps]
    data = hist.to_dict()
    assert [r["step"] for r in data["steps"]] == [1, 2, 3] and "epochs" not in data
    assert sparsekit.distill.DistillHistory(steps=[dict(r) for r in hist.steps]).steps == hist.steps
