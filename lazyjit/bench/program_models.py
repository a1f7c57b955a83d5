"""The real programs of ``python -m lazyjit programs``, each a whole run.

Each is a complete training (or sampling) run of realistic length, written for this
benchmark after one of the classic Pyro programs, on synthetic data of realistic shape
generated from a fixed seed (nothing is downloaded). ``run(steps, jit)`` builds its data,
model and guide, runs every step and returns a summary number (the mean loss over the
last tenth of the steps, or a posterior mean) so that the contenders can be checked for
sanity against each other. ``jit`` is the script's jit switch; Pyro's classes are looked
up when the program runs, so that ``lazyjit.install()`` applies to them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
from typing import Any

import torch


def _tail_mean(losses: list[float]) -> float:
    """The mean of the last tenth of ``losses`` (at least one): the run's final loss,
    less noisy than its last step."""
    n = max(1, len(losses) // 10)
    return float(sum(losses[-n:]) / n)


def _elbo(name: str, jit: bool, **kwargs: Any) -> Any:
    """``pyro.infer.<Jit><name>`` looked up at call time, so ``lazyjit.install()``
    applies to it."""
    import pyro.infer

    return getattr(pyro.infer, ("Jit" if jit else "") + name)(**kwargs)


# --------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=2)
def chorales(seed: int = 0, num_sequences: int = 229, max_length: int = 100, notes: int = 88):
    """Synthetic piano rolls shaped like the JSB chorales: ``(sequences, lengths)``,
    ``sequences`` of shape ``(229, 100, 88)`` (binary, zero past each length) and
    ``lengths`` in ``[max_length // 4, max_length]``.

    Four voices move by small steps over a keyboard of ``notes`` keys, holding a note
    for a random number of steps, so that notes persist and chords repeat as in
    chorales. Cached: callers must not modify the tensors.
    """
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max_length // 4, max_length + 1, (num_sequences,), generator=g)
    lengths[0] = max_length
    sequences = torch.zeros(num_sequences, max_length, notes)
    centres = torch.tensor([20.0, 32.0, 40.0, 48.0])
    for i in range(num_sequences):
        voices = centres + torch.randint(-4, 5, (4,), generator=g)
        for t in range(int(lengths[i])):
            move = torch.rand(4, generator=g) < 0.35
            step = torch.randint(-3, 4, (4,), generator=g)
            voices = torch.where(move, (voices + step).clamp(0, notes - 1), voices)
            sequences[i, t, voices.long()] = 1.0
    return sequences, lengths


def _images(seed: int, n: int) -> torch.Tensor:
    """``n`` binarized 28 x 28 images (flattened to 784), MNIST-like: each a random
    blend of two of ten smooth prototypes, then Bernoulli-sampled."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(10, 1, 28, 28, generator=g)
    kernel = torch.ones(1, 1, 7, 7) / 49.0
    smooth = torch.nn.functional.conv2d(noise, kernel, padding=3)
    prototypes = torch.sigmoid(12.0 * smooth).reshape(10, 784)
    first = torch.randint(0, 10, (n,), generator=g)
    second = torch.randint(0, 10, (n,), generator=g)
    w = torch.rand(n, 1, generator=g)
    probs = w * prototypes[first] + (1 - w) * prototypes[second]
    return torch.bernoulli(probs, generator=g)


# --------------------------------------------------------------------------- VAE


def vae(steps: int, jit: bool = True, seed: int = 0) -> dict[str, float]:
    """A variational autoencoder, after Pyro's VAE tutorial and ``examples/vae``.

    MLP encoder and decoder (784 - 400 - z 50), registered with ``pyro.module``;
    ``Trace_ELBO``/``JitTrace_ELBO``; Adam. Data: 10,240 binarized 784-pixel images
    (:func:`_images`), minibatches of 256 (40 per epoch, in a seeded shuffled order).
    One step is one minibatch.
    """
    import pyro
    import pyro.distributions as dist
    from torch import nn

    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    data = _images(seed, 10_240)
    z_dim, hidden = 50, 400

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(784, hidden)
            self.loc = nn.Linear(hidden, z_dim)
            self.scale = nn.Linear(hidden, z_dim)

        def forward(self, x):
            h = nn.functional.softplus(self.hidden(x))
            return self.loc(h), torch.exp(self.scale(h))

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(z_dim, hidden)
            self.out = nn.Linear(hidden, 784)

        def forward(self, z):
            return torch.sigmoid(self.out(nn.functional.softplus(self.hidden(z))))

    encoder, decoder = Encoder(), Decoder()

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([z_dim]).to_event(1))
            probs = decoder(z)
            pyro.sample("x", dist.Bernoulli(probs, validate_args=False).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), _elbo("Trace_ELBO", jit))
    order = torch.Generator().manual_seed(seed + 1)
    losses: list[float] = []
    batches: list[torch.Tensor] = []
    for _ in range(steps):
        if not batches:
            batches = list(data[torch.randperm(len(data), generator=order)].split(256))
        x = batches.pop()
        losses.append(svi.step(x) / len(x))
    return {"loss": _tail_mean(losses)}


# --------------------------------------------------------------------------- DMM


def _dmm_parts(z_dim: int = 32, emission: int = 64, transition: int = 128, rnn: int = 256):
    """The deep Markov model's networks: emitter, gated transition, combiner, GRU."""
    from torch import nn

    relu, softplus = nn.functional.relu, nn.functional.softplus

    class Emitter(nn.Module):  # p(x_t | z_t): 88 Bernoulli probabilities
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = (
                nn.Linear(z_dim, emission),
                nn.Linear(emission, emission),
                nn.Linear(emission, 88),
            )

        def forward(self, z):
            return torch.sigmoid(self.c(relu(self.b(relu(self.a(z))))))

    class Transition(nn.Module):  # p(z_t | z_{t-1}): a gated, partly linear step
        def __init__(self):
            super().__init__()
            self.gate_h, self.gate = nn.Linear(z_dim, transition), nn.Linear(transition, z_dim)
            self.prop_h, self.prop = nn.Linear(z_dim, transition), nn.Linear(transition, z_dim)
            self.linear, self.scale = nn.Linear(z_dim, z_dim), nn.Linear(z_dim, z_dim)
            nn.init.eye_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

        def forward(self, z):
            gate = torch.sigmoid(self.gate(relu(self.gate_h(z))))
            proposed = self.prop(relu(self.prop_h(z)))
            loc = (1 - gate) * self.linear(z) + gate * proposed
            return loc, softplus(self.scale(relu(proposed)))

    class Combiner(nn.Module):  # q(z_t | z_{t-1}, h_t): the guide's step
        def __init__(self):
            super().__init__()
            self.z_h = nn.Linear(z_dim, rnn)
            self.loc, self.scale = nn.Linear(rnn, z_dim), nn.Linear(rnn, z_dim)

        def forward(self, z, h):
            both = 0.5 * (torch.tanh(self.z_h(z)) + h)
            return self.loc(both), softplus(self.scale(both))

    class DMM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emitter, self.transition, self.combiner = Emitter(), Transition(), Combiner()
            self.gru = nn.GRU(88, rnn, batch_first=True)
            self.z_0 = nn.Parameter(torch.zeros(z_dim))
            self.z_q_0 = nn.Parameter(torch.zeros(z_dim))
            self.h_0 = nn.Parameter(torch.zeros(1, 1, rnn))

    return DMM(), z_dim


def _reverse(sequences: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each sequence reversed within its own length (padding stays at the end)."""
    t = torch.arange(sequences.size(1))
    index = (lengths.unsqueeze(1) - 1 - t).clamp(min=0)
    index = torch.where(t < lengths.unsqueeze(1), index, t)
    return sequences.gather(1, index.unsqueeze(-1).expand_as(sequences))


def dmm(
    steps: int,
    jit: bool = True,
    seed: int = 0,
    float_annealing: bool = False,
    sequences: int = 229,
) -> dict[str, float]:
    """A deep Markov model, after Pyro's ``examples/dmm.py`` (Krishnan et al.).

    Gated transition and MLP emitter in the model; in the guide a GRU over each
    sequence reversed within its length, and a combiner. ``Trace_ELBO`` /
    ``JitTrace_ELBO``, ``ClippedAdam`` (lr 3e-4, clipping at 10, weight decay 2.0).
    Data: :func:`chorales`, 229 sequences of 88 notes padded to 100 steps with masks;
    minibatches of 20 in a seeded shuffled order (the last partial one dropped, so the
    padded shape never changes). The KL annealing factor grows from 0.2 to 1 over the
    run and changes at every step: passed as a 0-dim tensor (what Pyro's jit accepts),
    or, with ``float_annealing``, as a Python float keyword argument (what a script
    would write first: each new value is a new signature, for Pyro's jit and lazyjit
    alike). Returns the final loss and whether any step's loss was NaN.
    """
    import pyro
    import pyro.distributions as dist
    from pyro import poutine

    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    data, lengths = chorales(seed)
    data, lengths = data[:sequences], lengths[:sequences]
    reversed_data = _reverse(data, lengths)
    mask = (torch.arange(data.size(1)) < lengths.unsqueeze(1)).float()
    net, z_dim = _dmm_parts()

    def model(x, x_reversed, mask, lengths, annealing):
        pyro.module("dmm", net)
        batch, t_max = x.size(0), x.size(1)
        z = net.z_0.expand(batch, z_dim)
        with pyro.plate("sequences", batch):
            for t in pyro.markov(range(t_max)):
                loc, scale = net.transition(z)
                m = mask[:, t : t + 1]
                with poutine.scale(scale=annealing):
                    z = pyro.sample(f"z_{t}", dist.Normal(loc, scale).mask(m).to_event(1))
                probs = net.emitter(z)
                pyro.sample(f"x_{t}", dist.Bernoulli(probs).mask(m).to_event(1), obs=x[:, t, :])

    def guide(x, x_reversed, mask, lengths, annealing):
        pyro.module("dmm", net)
        batch, t_max = x.size(0), x.size(1)
        h_0 = net.h_0.expand(1, batch, net.gru.hidden_size).contiguous()
        hidden, _ = net.gru(x_reversed, h_0)
        hidden = _reverse(hidden, lengths)
        z = net.z_q_0.expand(batch, z_dim)
        with pyro.plate("sequences", batch):
            for t in pyro.markov(range(t_max)):
                loc, scale = net.combiner(z, hidden[:, t, :])
                m = mask[:, t : t + 1]
                with poutine.scale(scale=annealing):
                    z = pyro.sample(f"z_{t}", dist.Normal(loc, scale).mask(m).to_event(1))

    # The guide's un-reversing needs the minibatch's lengths: an argument, as in Pyro's
    # example (read from a closure, a compiled guide would keep the first minibatch's).
    if float_annealing:

        def model_kw(x, x_reversed, mask, lengths, annealing=1.0):
            return model(x, x_reversed, mask, lengths, annealing)

        def guide_kw(x, x_reversed, mask, lengths, annealing=1.0):
            return guide(x, x_reversed, mask, lengths, annealing)

        svi_model, svi_guide = model_kw, guide_kw
    else:
        svi_model, svi_guide = model, guide

    optim = pyro.optim.ClippedAdam(
        {"lr": 3e-4, "betas": (0.96, 0.999), "clip_norm": 10.0, "lrd": 0.99996, "weight_decay": 2.0}
    )
    svi = pyro.infer.SVI(svi_model, svi_guide, optim, _elbo("Trace_ELBO", jit))
    order = torch.Generator().manual_seed(seed + 1)
    batch_size = min(20, len(data))
    losses: list[float] = []
    batches: list[torch.Tensor] = []
    nan_steps = 0
    for step in range(steps):
        if not batches:
            perm = torch.randperm(len(data), generator=order)
            batches = list(perm.split(batch_size))
            if len(batches[-1]) < batch_size:
                batches.pop()
        index = batches.pop()
        annealing = 0.2 + 0.8 * min(1.0, (step + 1) / steps)
        normalizer = float(mask[index].sum())
        batch = (data[index], reversed_data[index], mask[index], lengths[index])
        if float_annealing:
            loss = svi.step(*batch, annealing=annealing)
        else:
            loss = svi.step(*batch, torch.tensor(annealing))
        nan_steps += math.isnan(loss)
        losses.append(loss / normalizer)
    return {"loss": _tail_mean(losses), "nan_steps": nan_steps}


# --------------------------------------------------------------------------- HMMs


def hmm(
    steps: int, jit: bool = True, seed: int = 0, factorial: bool = False, sequences: int = 229
) -> dict[str, float]:
    """Hidden Markov models of piano rolls, after Pyro's ``examples/contrib/hmm.py``
    (its model 1, and with ``factorial`` its model 3).

    One hidden state of 16 values (``factorial``: two independent chains of 8 values
    each, both emitting) per step, enumerated in parallel inside ``pyro.markov``; 88
    Bernoulli notes per step; sequences masked past their lengths; a MAP guide
    (``AutoDelta`` of the global probabilities); ``TraceEnum_ELBO`` /
    ``JitTraceEnum_ELBO``; Adam. Data: :func:`chorales`, 229 sequences padded to 100
    steps; each step subsamples 8 sequences inside the model's plate, as Pyro's
    example does.
    """
    import pyro
    import pyro.distributions as dist
    from pyro import poutine
    from pyro.infer.autoguide import AutoDelta

    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    data, lengths = chorales(seed)
    data, lengths = data[:sequences], lengths[:sequences]
    hidden = 8 if factorial else 16

    def model(sequences, lengths, batch_size=8):
        num_sequences, max_length, notes = sequences.shape
        transition = 0.9 * torch.eye(hidden) + 0.1
        probs_w = pyro.sample("probs_w", dist.Dirichlet(transition).to_event(1))
        if factorial:
            probs_x = pyro.sample("probs_x", dist.Dirichlet(transition).to_event(1))
            shape = [hidden, hidden, notes]
        else:
            shape = [hidden, notes]
        probs_y = pyro.sample("probs_y", dist.Beta(0.1, 0.9).expand(shape).to_event(len(shape)))
        notes_plate = pyro.plate("notes", notes, dim=-1)
        with pyro.plate("sequences", num_sequences, batch_size, dim=-2) as batch:
            batch_lengths = lengths[batch]
            w = x = 0
            for t in pyro.markov(range(max_length)):
                with poutine.mask(mask=(t < batch_lengths).unsqueeze(-1)):
                    w = pyro.sample(
                        f"w_{t}", dist.Categorical(probs_w[w]), infer={"enumerate": "parallel"}
                    )
                    if factorial:
                        x = pyro.sample(
                            f"x_{t}",
                            dist.Categorical(probs_x[x]),
                            infer={"enumerate": "parallel"},
                        )
                        probs = probs_y[w.squeeze(-1), x.squeeze(-1)]
                    else:
                        probs = probs_y[w.squeeze(-1)]
                    with notes_plate:
                        pyro.sample(f"y_{t}", dist.Bernoulli(probs), obs=sequences[batch, t])

    guide = AutoDelta(poutine.block(model, expose_fn=lambda msg: msg["name"].startswith("probs")))
    elbo = _elbo("TraceEnum_ELBO", jit, max_plate_nesting=2)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    normalizer = float(lengths.sum())
    losses = [svi.step(data, lengths) / normalizer for _ in range(steps)]
    return {"loss": _tail_mean(losses)}


def hmm_factorial(steps: int, jit: bool = True, seed: int = 0) -> dict[str, float]:
    """:func:`hmm` with ``factorial=True``."""
    return hmm(steps, jit, seed, factorial=True)


# --------------------------------------------------------------------------- LDA


def lda(steps: int, jit: bool = True, seed: int = 0) -> dict[str, float]:
    """Latent Dirichlet allocation with an amortized guide, after Pyro's
    ``examples/lda.py``.

    8 topics over a vocabulary of 1,024 words; 1,000 documents of 64 words each, data
    of shape ``(64, 1000)`` drawn from the model's own generative process with fixed
    topics; each word's topic enumerated in parallel; the guide a MAP of the topics and
    an MLP from a document's word counts to its topic weights (``Delta``);
    ``TraceEnum_ELBO`` / ``JitTraceEnum_ELBO``, Adam; minibatches of 32 documents
    subsampled by the plate.
    """
    import pyro
    import pyro.distributions as dist
    from torch import nn
    from torch.distributions import constraints

    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    topics, vocabulary, num_docs, words_per_doc, batch_size = 8, 1024, 1000, 64, 32
    g = torch.Generator().manual_seed(seed)
    true_words = torch.softmax(torch.randn(topics, vocabulary, generator=g) * 3, -1)
    doc_topics = torch.softmax(torch.randn(num_docs, topics, generator=g) * 2, -1)
    word_topics = torch.multinomial(doc_topics, words_per_doc, True, generator=g)
    data = torch.multinomial(true_words[word_topics.reshape(-1)], 1, generator=g)
    data = data.reshape(num_docs, words_per_doc).t().contiguous()

    predictor = nn.Sequential(
        nn.Linear(vocabulary, 100), nn.Sigmoid(), nn.Linear(100, topics), nn.Softmax(-1)
    )

    def model(data):
        with pyro.plate("topics", topics):
            weights = pyro.sample("topic_weights", dist.Gamma(1.0 / topics, 1.0))
            words = pyro.sample("topic_words", dist.Dirichlet(torch.ones(vocabulary) / vocabulary))
        with pyro.plate("documents", num_docs, batch_size, dim=-1) as ind:
            doc_data = data[:, ind]
            doc = pyro.sample("doc_topics", dist.Dirichlet(weights))
            with pyro.plate("words", words_per_doc, dim=-2):
                topic = pyro.sample(
                    "word_topics", dist.Categorical(doc), infer={"enumerate": "parallel"}
                )
                pyro.sample("doc_words", dist.Categorical(words[topic]), obs=doc_data)

    def guide(data):
        pyro.module("predictor", predictor)
        weights_post = pyro.param(
            "topic_weights_post", lambda: torch.ones(topics), constraint=constraints.positive
        )
        words_post = pyro.param(
            "topic_words_post",
            lambda: torch.ones(topics, vocabulary),
            constraint=constraints.greater_than(0.5),
        )
        with pyro.plate("topics", topics):
            pyro.sample("topic_weights", dist.Gamma(weights_post, 1.0))
            pyro.sample("topic_words", dist.Dirichlet(words_post))
        with pyro.plate("documents", num_docs, batch_size, dim=-1) as ind:
            doc_data = data[:, ind]
            counts = torch.zeros(vocabulary, len(ind)).scatter_add(
                0, doc_data, torch.ones(doc_data.shape)
            )
            pyro.sample("doc_topics", dist.Delta(predictor(counts.t()), event_dim=1))

    elbo = _elbo("TraceEnum_ELBO", jit, max_plate_nesting=2)
    svi = pyro.infer.SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.01}), elbo)
    normalizer = float(batch_size * words_per_doc)
    losses = [svi.step(data) / normalizer for _ in range(steps)]
    return {"loss": _tail_mean(losses)}


# --------------------------------------------------------------------------- others


def sir(steps: int, jit: bool = True, seed: int = 0) -> dict[str, float]:
    """An SIR epidemic fitted by SVI, after Pyro's ``examples/contrib/epidemiology/sir.py``:
    ``pyro.contrib.epidemiology.SimpleSIRModel(population=1000, recovery_time=7)`` on 40
    days of new-case counts simulated from a discrete-time SIR (R0 2.5, 60% of cases
    observed), ``.fit_svi(num_steps=steps, num_particles=8, jit=jit)`` (an
    ``AutoNormal`` guide, Haar reparameterized; its SMC heuristic initialization
    included). Returns the final loss (per day)."""
    import pyro
    from pyro.contrib.epidemiology.models import SimpleSIRModel

    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    g = torch.Generator().manual_seed(seed)
    population, recovery, days = 1000, 7.0, 40
    s, i = population - 3.0, 3.0
    cases = []
    for _ in range(days):
        p_infect = 1 - math.exp(-2.5 / recovery * i / population)
        s2i = torch.binomial(torch.tensor(s), torch.tensor(p_infect), generator=g)
        i2r = torch.binomial(torch.tensor(i), torch.tensor(1 / recovery), generator=g)
        s, i = s - float(s2i), i + float(s2i) - float(i2r)
        cases.append(torch.binomial(s2i, torch.tensor(0.6), generator=g))
    data = torch.stack(cases)
    model = SimpleSIRModel(population, recovery, data)
    losses = model.fit_svi(num_steps=steps, num_particles=8, jit=jit, log_every=10**9)
    return {"loss": _tail_mean(losses)}


def eight_schools(steps: int, jit: bool = True, seed: int = 0) -> dict[str, float]:
    """Eight schools (Rubin 1981), non-centered, by NUTS, after Pyro's MCMC examples:
    ``pyro.infer.NUTS(model, jit_compile=jit)``, ``steps`` warmup and ``steps``
    samples, one chain. Data: 8 effects drawn from the model (mu 4, tau 3) with
    standard errors between 9 and 18. Returns the posterior mean of ``mu``."""
    import pyro
    import pyro.distributions as dist
    import pyro.infer

    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    g = torch.Generator().manual_seed(seed)
    sigma = 9.0 + 9.0 * torch.rand(8, generator=g)
    theta = 4.0 + 3.0 * torch.randn(8, generator=g)
    y = theta + sigma * torch.randn(8, generator=g)

    def model(sigma, y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", len(sigma)):
            offset = pyro.sample("offset", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(mu + tau * offset, sigma), obs=y)

    kernel = pyro.infer.NUTS(model, jit_compile=jit, ignore_jit_warnings=True)
    mcmc = pyro.infer.MCMC(kernel, num_samples=steps, warmup_steps=steps, disable_progbar=True)
    mcmc.run(sigma, y)
    return {"loss": float(mcmc.get_samples()["mu"].mean())}


def mue(steps: int, jit: bool = True, seed: int = 0) -> dict[str, float]:
    """A profile HMM fitted by SVI, after Pyro's ``examples/contrib/mue/ProfileHMM.py``:
    ``pyro.contrib.mue.models.ProfileHMM(latent_seq_length=24, alphabet_length=4)``,
    ``.fit_svi(dataset, epochs=steps, batch_size=10, jit=jit)``. Data: 100 DNA sequences
    of 18 to 30 letters mutated from one ancestor of 24 (substitutions, insertions and
    deletions), one-hot and padded (``BiosequenceDataset``). One step is one epoch of
    10 minibatches. Returns the final loss."""
    import pyro
    from pyro.contrib.mue.dataloaders import BiosequenceDataset
    from pyro.contrib.mue.models import ProfileHMM

    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    g = torch.Generator().manual_seed(seed)
    letters = "ACGT"
    ancestor = [int(c) for c in torch.randint(0, 4, (24,), generator=g)]
    seqs = []
    for _ in range(100):
        seq = []
        for base in ancestor:
            r = float(torch.rand((), generator=g))
            if r < 0.05:  # deletion
                continue
            seq.append(int(torch.randint(0, 4, (), generator=g)) if r < 0.15 else base)
            if float(torch.rand((), generator=g)) < 0.05:  # insertion
                seq.append(int(torch.randint(0, 4, (), generator=g)))
        seqs.append("".join(letters[b] for b in seq))
    dataset = BiosequenceDataset(seqs, "list", "dna")
    dataset.seq_data = dataset.seq_data.float()  # one-hot in float64; the model is float32
    model = ProfileHMM(24, dataset.alphabet_length)
    with contextlib.redirect_stdout(io.StringIO()):  # fit_svi prints every epoch
        losses = model.fit_svi(dataset, epochs=steps, batch_size=10, jit=jit)
    return {"loss": _tail_mean(losses) / 10}
