"""The character CTC head: its prefix scoring against the token scorer (itself checked by brute force), the
token -> character mapping, the numpy head against the PyTorch one it is trained as, its file, its training,
and guided transcription through a bundle and the PyTorch reference."""

from __future__ import annotations

import numpy as np
import pytest

from falcon_audio_edge.errors import BundleError, ConfigError, FaEdgeError
from falcon_audio_edge.runtime.charnet import ALPHABET, CHAR_HEAD_FILE, load_char_head
from falcon_audio_edge.runtime.chars import (
    LABELS,
    SPACE,
    CharPrefixScorer,
    JointScorer,
    extend,
    text_labels,
    transcript_labels,
)
from falcon_audio_edge.runtime.ctc import CTCPrefixScorer
from falcon_audio_edge.settings import (
    DEFAULT_CHAR_WEIGHT,
    DEFAULT_CTC_WEIGHT,
    DEFAULT_CTC_WEIGHT_WITH_CHARS,
    TRANSCRIBE_PROMPT,
    GenerationSettings,
    char_weight_for,
    ctc_weight_for,
    guidance_for,
)
from tests.conftest import decoding_file, fa_edge
from tests.test_ctc import random_log_probs

N_LABELS = 1 + len(ALPHABET)


def test_extend_equals_the_token_scorer_label_by_label():
    """A label sequence scored by ``extend`` (cumulative sums) equals CTCPrefixScorer (a loop over frames) on
    the same log-probabilities, repeats and all."""
    rng = np.random.default_rng(1)
    x = random_log_probs(rng, frames=14, vocab=6)
    ref = CTCPrefixScorer(x, end_token=99)
    r_n, r_b, last = np.full((14, 1), -np.inf), np.cumsum(x[:, :1], axis=0), np.array([-1])  # one prefix: K = 1
    for label in [2, 2, 3, 1, 1, 5]:
        want = ref.scores(np.array([label - 1]))[0]
        ref.advance(label - 1)
        r_n, r_b, psi = extend(x, r_n, r_b, last, np.array([label]))
        last = np.array([label])
        assert np.isclose(psi[0], want, rtol=1e-9)
        assert np.isclose(np.logaddexp(r_n[-1, 0], r_b[-1, 0]), ref.full, rtol=1e-9)
    # K prefixes side by side: each column as if alone
    rng_labels = rng.integers(1, 6, size=(5, 4))
    cols = [(np.full((14, 1), -np.inf), np.cumsum(x[:, :1], axis=0), np.array([-1])) for _ in range(4)]
    many = (np.full((14, 4), -np.inf), np.repeat(np.cumsum(x[:, :1], axis=0), 4, axis=1), np.full(4, -1))
    for step in rng_labels:
        n, b, psi = extend(x, *many, step)
        many = (n, b, step)
        for k in range(4):
            n1, b1, psi1 = extend(x, *cols[k], step[k : k + 1])
            cols[k] = (n1, b1, step[k : k + 1])
            assert np.array_equal(n[:, k : k + 1], n1) and np.array_equal(b[:, k : k + 1], b1) and psi1[0] == psi[k]


def test_token_text_becomes_labels():
    assert text_labels(" Hi") == [SPACE, LABELS["h"], LABELS["i"]]
    assert text_labels("?") == [SPACE] and text_labels("2") == [SPACE]  # not heard: a space, as in training
    assert text_labels("U.S.") == transcript_labels("U.S.") + [SPACE]
    assert text_labels("-up") == [SPACE, LABELS["u"], LABELS["p"]]
    assert transcript_labels("  Don't stop, co-op!") == text_labels("don't stop co op")


def spelling(text: str, frames_per_label: int = 2, sure: float = 6.0) -> np.ndarray:
    """Log-probabilities that say ``text``: each label for a few frames, a blank between."""
    rows = []
    for label in transcript_labels(text):
        rows += [label] * frames_per_label + [0]
    x = np.zeros((len(rows) + 2, N_LABELS))
    x[np.arange(len(rows)), rows] = sure
    x[len(rows) :, 0] = sure
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


TOKENS = {0: "What", 1: " is", 2: " it", 3: "?", 4: " its", 5: "<end>", 6: " i", 7: "s"}


def scorer_for(text: str) -> CharPrefixScorer:
    return CharPrefixScorer(spelling(text), end_token=5, token_text=lambda t: "" if t == 5 else TOKENS[t])


def test_char_scorer_follows_the_spelling_across_token_boundaries():
    scorer = scorer_for("what is it")
    words = np.array([0, 1, 2, 4])  # whole words (" i" is a prefix of " is": as likely a start, or more)
    for token in (0, 1):
        assert words[np.argmax(scorer.scores(words))] == token
        scorer.advance(token)
    scores = scorer.scores(np.array([2, 4, 3, 5]))
    assert scores[0] > scores[1] + 3  # " it", not " its"
    assert scores[2] == scores[3] == scorer.full  # "?" says nothing: scored as ending here, like the end
    short = scorer.full
    scorer.advance(2)
    assert scorer.full > short + 10  # the whole spelling said: far likelier the audio is exactly it
    two_tokens = scorer_for("what is it")
    for token in (0, 6, 7):  # " i" + "s" spells what " is" spells
        two_tokens.scores(np.array([token]))
        two_tokens.advance(token)
    one = scorer_for("what is it")
    for token in (0, 1):
        one.advance(token)
    assert np.isclose(two_tokens.score, one.score) and two_tokens.state.labels == one.state.labels


def test_extended_leaves_the_parent_and_joint_weights_the_two_heads():
    scorer = scorer_for("what is it")
    child = scorer.extended(0)
    assert scorer.state.labels == () and len(child.state.labels) == 4
    token = CTCPrefixScorer(random_log_probs(np.random.default_rng(0), 20, 8), end_token=5)
    joint = JointScorer(token, scorer_for("what is it"), 0.3, 0.2)
    cands = np.array([0, 1, 3])
    want = (0.3 * token.scores(cands) + 0.2 * scorer_for("what is it").scores(cands)) / 0.5
    assert np.allclose(joint.scores(cands), want) and joint.x is token.x
    moved = joint.extended(0)
    assert joint.chars.state.labels == () and moved.chars.state.labels and moved.token.prefix == [0]


def make_head(hidden: int = 8, width: int = 16, context: int = 1, seed: int = 0, blocks: int = 0):
    import torch
    from falcon_audio_edge.train.charhead import CharHeadConfig, head_module
    from falcon_audio_edge.train.charnet import to_char_head

    cfg = CharHeadConfig(steps=10, warmup_steps=1, width=width, context=context, blocks=blocks)
    torch.manual_seed(seed)
    net = head_module(hidden, cfg)
    return net, cfg, to_char_head(net)


@pytest.mark.parametrize("blocks", [0, 2])
def test_numpy_head_equals_the_torch_head_and_survives_its_file(tmp_path, blocks):
    import torch
    from falcon_audio_edge.train.charhead import head_log_probs

    net, cfg, head = make_head(blocks=blocks)
    net.eval()
    embeds = np.random.default_rng(0).normal(size=(7, 8)).astype(np.float32)
    with torch.no_grad():
        want = head_log_probs(net, torch.from_numpy(embeds)).numpy()
    got = head.log_probs(embeds)
    assert got.shape == (14, N_LABELS) and np.abs(got - want).max() < 1e-4
    assert len(head.blocks) == blocks
    assert np.allclose(np.exp(got).sum(axis=1), 1.0)
    head.save(tmp_path / CHAR_HEAD_FILE)
    loaded = load_char_head(tmp_path / CHAR_HEAD_FILE, hidden=8)
    assert loaded.context == 1 and loaded.upsample == 2 and len(loaded.blocks) == blocks
    assert np.abs(loaded.log_probs(embeds) - got).max() < 0.05  # stored in float16
    with pytest.raises(BundleError, match="reads 8-wide embeddings; the decoder's are 32"):
        load_char_head(tmp_path / CHAR_HEAD_FILE, hidden=32)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="cannot read the character head"):
        load_char_head(tmp_path / "bad.npz")


@pytest.mark.parametrize("blocks", [0, 1])
def test_a_head_goes_back_into_a_network_that_trains_on(blocks):
    """from_char_head undoes to_char_head: the network it gives computes what the numpy head computes."""
    import torch
    from falcon_audio_edge.train.charhead import head_log_probs
    from falcon_audio_edge.train.charnet import from_char_head

    _, _, head = make_head(blocks=blocks, seed=3)
    net = from_char_head(head).eval()
    assert all(p.requires_grad for p in net.parameters())
    embeds = np.random.default_rng(1).normal(size=(9, 8)).astype(np.float32)
    with torch.no_grad():
        got = head_log_probs(net, torch.from_numpy(embeds)).numpy()
    assert np.abs(got - head.log_probs(embeds)).max() < 1e-4


def test_head_training_learns_to_spell_synthetic_audio():
    """Embeddings that are one fixed vector per letter (and one for silence): the trained head reads them."""
    from falcon_audio_edge.train.charhead import CharHeadConfig, Clip, greedy_text, train_head

    rng = np.random.default_rng(0)
    codes = rng.normal(size=(N_LABELS, 16)).astype(np.float32)
    words = ["cab", "bad", "dab", "abc", "bead", "face", "fade", "deaf"]

    def clip(text: str) -> Clip:
        labels = transcript_labels(text)
        frames = [codes[label] for label in labels for _ in range(2)] + [codes[0]] * 2
        return Clip(np.stack(frames) + rng.normal(size=(len(frames), 16)).astype(np.float32) * 0.1, labels, text)

    train = [clip(f"{a} {b}") for a in words for b in words]
    cfg = CharHeadConfig(steps=300, batch_size=8, warmup_steps=20, width=64, context=1, eval_every=300)
    head = train_head(train, [], 16, cfg, log=lambda m: None)
    test = clip("face bead")
    assert greedy_text(head.log_probs(test.embeds)) == "face bead"


def test_batched_clips_read_as_each_alone():
    """Padding a short clip up to a long one's length changes none of its own frames' outputs (the blocks'
    attention masks the padding)."""
    import torch

    net, _, _ = make_head(blocks=2)
    net.eval()
    rng = np.random.default_rng(1)
    short, long = (torch.from_numpy(rng.normal(size=(n, 8)).astype(np.float32)) for n in (3, 9))
    with torch.no_grad():
        both, lengths = net([short, long])
        alone = net([short])[0]
    assert lengths.tolist() == [6, 18] and torch.allclose(both[:6, 0], alone[:, 0], atol=1e-5)


def test_a_head_file_without_blocks_reads_as_the_plain_mlp_and_bad_blocks_are_refused(tmp_path):
    _, _, head = make_head(blocks=1)
    embeds = np.random.default_rng(2).normal(size=(5, 8)).astype(np.float32)
    _, _, plain = make_head()
    arrays = {f"w{i}": w for i, w in enumerate(plain.weights)} | {f"b{i}": b for i, b in enumerate(plain.biases)}
    np.savez(tmp_path / "old.npz", **arrays, context=1, upsample=2, alphabet=np.array(ALPHABET))  # the first format
    old = load_char_head(tmp_path / "old.npz", hidden=8)
    assert old.blocks == () and np.abs(old.log_probs(embeds) - plain.log_probs(embeds)).max() < 1e-5
    bad = dict(head.blocks[0], qkv_w=head.blocks[0]["qkv_w"][:, :-1])
    with pytest.raises(BundleError, match="block 0 qkv_w: shape \\(16, 47\\), expected \\(16, 48\\)"):
        type(head)(head.weights, head.biases, head.context, head.upsample, blocks=(bad,), heads=4, norm=head.norm)
    with pytest.raises(BundleError, match="width 16 does not split into 3 attention heads"):
        type(head)(head.weights, head.biases, head.context, head.upsample, blocks=head.blocks, heads=3, norm=head.norm)
    with pytest.raises(BundleError, match="heads=4 and 2 final norm arrays, but no transformer blocks"):
        type(head)(head.weights, head.biases, head.context, head.upsample, heads=4, norm=head.norm)
    head.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as data:
        assert "w2" not in data and "out_w" in data  # a reader that knows no blocks fails on it
        arrays = {k: data[k] for k in data.files if k != "block0_ff2_b"}
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(BundleError, match="cannot read the character head .*cut.npz.*block0_ff2_b"):
        load_char_head(tmp_path / "cut.npz")


def test_augmented_clips_stay_long_enough_for_their_labels():
    from falcon_audio_edge.train.charhead import CharHeadConfig, augmented, ctc_frames

    assert ctc_frames([3, 3, 4, 4, 4]) == 8 and ctc_frames([1, 2]) == 2 and ctc_frames([]) == 0
    rng = np.random.default_rng(0)
    ramp = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 4), dtype=np.float32)  # frame i is all i
    labels = [2, 2, *range(3, 20)]  # 19 labels, one repeat: CTC needs 20 frames, 10 embeddings at upsample 2
    stretched = [augmented(ramp, labels, CharHeadConfig(stretch=0.45), rng) for _ in range(50)]
    assert min(map(len, stretched)) == 11 and max(map(len, stretched)) <= 29  # floor: the clip's own 20 or need
    short = [augmented(ramp, labels * 2, CharHeadConfig(stretch=0.45), rng) for _ in range(20)]
    assert min(map(len, short)) == 20  # 39 frames needed: never shrunk below the clip itself
    for x in stretched:
        assert x.dtype == np.float32 and x[0, 0] == 0 and x[-1, 0] == 19 and np.all(np.diff(x[:, 0]) > 0)
    masked_cfg = CharHeadConfig(time_mask=0.3)
    masked = [augmented(ramp, labels, masked_cfg, rng) for _ in range(50)]
    share = [float((x == 0).all(axis=1)[1:].mean()) for x in masked]  # frame 0 is zero anyway
    assert 0.1 < np.mean(share) < 0.4 and min(share) < max(share)
    assert np.array_equal(ramp[:, 0], np.arange(20)) and all(len(x) == 20 for x in masked)  # the cache is untouched
    with pytest.raises(ConfigError, match="stretch must be in \\[0, 0.5\\), got 0.7"):
        CharHeadConfig(stretch=0.7)
    with pytest.raises(ConfigError, match="width=30 must be a multiple of heads=4"):
        CharHeadConfig(blocks=1, width=30)


def test_alibi_penalises_distance_less_in_each_further_head():
    from falcon_audio_edge.runtime.charnet import alibi_bias

    bias = alibi_bias(3, 2)
    assert bias.shape == (2, 3, 3) and np.allclose(bias[0], -np.abs(np.subtract.outer(range(3), range(3))) / 16)
    assert np.allclose(bias[1], bias[0] / 16) and np.all(np.diagonal(bias, axis1=1, axis2=2) == 0)


def test_char_settings_are_checked_and_default_only_for_transcription():
    with pytest.raises(ConfigError, match="ctc_weight=0.6 \\+ char_weight=0.5 must stay below 1"):
        GenerationSettings(ctc_weight=0.6, char_weight=0.5)
    with pytest.raises(ConfigError, match="char_weight=0.2 rescores greedy decoding"):
        GenerationSettings(char_weight=0.2, temperature=0.7)
    char, token, token_alone = DEFAULT_CHAR_WEIGHT, DEFAULT_CTC_WEIGHT_WITH_CHARS, DEFAULT_CTC_WEIGHT
    assert 0 < char and 0 < token and char + token < 1 and 0 < token_alone < 1  # the dev split's choices
    assert char_weight_for(TRANSCRIBE_PROMPT, True) == char and char_weight_for(None, True) == 0.0
    assert char_weight_for(TRANSCRIBE_PROMPT, False) == 0.0 and char_weight_for(None, True, 0.4) == 0.4
    assert ctc_weight_for(TRANSCRIBE_PROMPT, True, chars=0.2) == token
    assert ctc_weight_for(TRANSCRIBE_PROMPT, True) == token_alone
    assert guidance_for(TRANSCRIBE_PROMPT, True, True) == (token, char)
    assert guidance_for(TRANSCRIBE_PROMPT, True, False) == (token_alone, 0.0)
    assert guidance_for(None, True, True) == (0.0, 0.0)
    # naming one weight leaves the other at 0 (--ctc-weight 0 alone turns guidance off; 0.9 alone is valid)
    assert guidance_for(TRANSCRIBE_PROMPT, True, True, ctc=0.9) == (0.9, 0.0)
    assert guidance_for(TRANSCRIBE_PROMPT, True, True, ctc=0.0) == (0.0, 0.0)
    assert guidance_for(TRANSCRIBE_PROMPT, True, True, chars=0.4) == (0.0, 0.4)


@pytest.fixture(scope="module")
def char_bundle(ctc_bundle, tmp_path_factory):
    """The CTC test model with a (random) character head beside its weights, exported: the bundle carries it.
    The head has a transformer block, so its file has every kind of array (the MLP-only format has its own test)."""
    import shutil

    from falcon_audio_edge.export.bundle import export_bundle

    folder = tmp_path_factory.mktemp("chars")
    shutil.copytree(ctc_bundle[0], folder / "ckpt")
    _, _, head = make_head(hidden=32, width=16, context=1, seed=3, blocks=1)
    head.save(folder / "ckpt" / CHAR_HEAD_FILE)
    return folder / "ckpt", export_bundle(folder / "ckpt", folder / "bundle", decoder_type="f32")


def test_bundle_and_reference_transcribe_alike_with_the_character_head(char_bundle, clips):
    from falcon_audio_edge.reference import open_checkpoint
    from falcon_audio_edge.runtime.backend import open_bundle
    from falcon_audio_edge.runtime.bundle import read_bundle

    ckpt, bundle = char_bundle
    assert read_bundle(bundle).char_path == bundle / CHAR_HEAD_FILE
    gen = GenerationSettings(max_tokens=6, ctc_weight=0.3, char_weight=0.4)
    with open_bundle(bundle) as chat, open_checkpoint(ckpt) as ref:
        assert chat.has_char_head and ref.has_char_head
        heard = chat.ask(clips["q0"], TRANSCRIBE_PROMPT, gen).run()
        assert heard.tokens == ref.ask(clips["q0"], TRANSCRIBE_PROMPT, gen).run().tokens
        chat.reset()
        token_only = chat.ask(clips["q0"], TRANSCRIBE_PROMPT, GenerationSettings(max_tokens=6, ctc_weight=0.3)).run()
        chat.reset()
        beam = chat.ask(clips["q0"], TRANSCRIBE_PROMPT, GenerationSettings(**{**gen.__dict__, "beam_size": 3})).run()
    assert 1 <= len(heard.tokens) <= 6 and heard.tokens != token_only.tokens  # the character head had its say
    assert 1 <= len(beam.tokens) <= 6


def test_a_bundle_without_a_character_head_refuses_its_weight(ctc_bundle, clips, tmp_path):
    from falcon_audio_edge.runtime.backend import open_bundle

    with open_bundle(ctc_bundle[1]) as chat:
        assert not chat.has_char_head
        with pytest.raises(FaEdgeError, match="char_weight=0.2 needs a model with a character head"):
            chat.ask(clips["q0"], TRANSCRIBE_PROMPT, GenerationSettings(char_weight=0.2))
    chars = decoding_file(tmp_path, char_weight=0.2)
    bad = fa_edge("ask", str(ctc_bundle[1]), "--audio", str(clips["q0"]), "--decoding", chars, check=False)
    assert bad.returncode == 2 and "needs a model with a character head" in bad.stderr


def test_export_refuses_a_character_head_of_another_width(ctc_bundle, tmp_path):
    import shutil

    from falcon_audio_edge.export.bundle import export_bundle

    shutil.copytree(ctc_bundle[0], tmp_path / "ckpt")
    make_head(hidden=8)[2].save(tmp_path / "ckpt" / CHAR_HEAD_FILE)
    with pytest.raises(BundleError, match="reads 8-wide embeddings; the decoder's are 32"):
        export_bundle(tmp_path / "ckpt", tmp_path / "bundle", decoder_type="f32")
    assert not (tmp_path / "bundle").exists()


def test_quantized_bundle_keeps_the_character_head(char_bundle, tmp_path):
    from falcon_audio_edge.quantize.bundle import quantize_bundle

    from falcon_audio_edge.runtime.bundle import read_bundle

    out = quantize_bundle(char_bundle[1], tmp_path / "q", decoder="q8_0", encoder="int8", verify=False)
    bundle = read_bundle(out)
    assert bundle.char_path == out / CHAR_HEAD_FILE
    assert (out / CHAR_HEAD_FILE).read_bytes() == (char_bundle[1] / CHAR_HEAD_FILE).read_bytes()
