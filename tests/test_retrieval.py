"""A retrieval policy's `exclude` (promptopt/task/retrieval.py): the index of the train split less some ids,
as the k-fold final pick refits a retrieval candidate on a fold's training part."""
import pytest

from promptopt.errors import ConfigError
from promptopt.task.retrieval import RetrievalPolicy, Retriever, check_policy
from promptopt.types import Candidate, Example

WORDS = ["rain storm wind", "goal match team", "stock market bank", "rain cloud cold", "team coach league",
         "bank loan rate", "storm flood rain", "match referee goal"]
TRAIN = [Example(f"t{i}", text, str(i % 2), label=i % 2) for i, text in enumerate(WORDS)]
QUERIES = [Example("q0", "heavy rain and storm", "0"), Example("q1", "the team won the match", "1"),
           Example("t0", "rain storm wind", "0", label=0)]


class LetterEmbedder:
    """A real (if crude) embedder: letter counts. Counts its calls, so a test can see what is embedded."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def embed(self, texts):
        self.texts += list(texts)
        return [[t.count(c) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts]

    def fingerprint(self) -> str:
        return "letters"


@pytest.mark.parametrize("embedding", ["bm25", "hidden"])
def test_excluding_ids_retrieves_as_an_index_built_without_them(embedding):
    gone = ("t3", "t6")
    for policy in (RetrievalPolicy(k=3, embedding=embedding), RetrievalPolicy(k=3, embedding=embedding, mmr=0.5,
                                                                               balanced=True, order="nearest_first")):
        whole = Retriever(TRAIN, LetterEmbedder())
        fresh = Retriever([ex for ex in TRAIN if ex.id not in gone], LetterEmbedder())
        got = whole.retrieve(RetrievalPolicy(**{**policy.__dict__, "exclude": gone}), QUERIES)
        assert got == fresh.retrieve(policy, QUERIES)
        assert not {d for ids in got for d in ids} & set(gone) and all("t0" not in ids for ids in got[2:])
        assert whole.retrieve(policy, QUERIES) != got  # the excluded rain examples were among the nearest


def test_a_subset_reuses_the_train_vectors_and_the_query_vectors():
    target = LetterEmbedder()
    whole = Retriever(TRAIN, target)
    policy = RetrievalPolicy(k=2, embedding="hidden")
    whole.retrieve(policy, QUERIES[:1])
    assert len(target.texts) == len(TRAIN) + 1
    whole.retrieve(RetrievalPolicy(k=2, embedding="hidden", exclude=("t1",)), QUERIES[:2])
    assert target.texts[len(TRAIN) + 1:] == [QUERIES[1].input]  # only the new query is embedded
    assert whole.without(["t1"]) is whole.without(("t1", "t1")) and whole.without(()) is whole


def test_exclude_is_in_the_candidate_id_only_when_set_and_round_trips():
    plain = RetrievalPolicy(k=2)
    assert "exclude" not in plain.to_json()
    cand = Candidate("x", retrieval=RetrievalPolicy(k=2, exclude=("t1", "t2")))
    assert Candidate.from_json(cand.to_json()) == cand and cand.id != Candidate("x", retrieval=plain).id
    with pytest.raises(ConfigError, match="k=7 is larger than the train split .6 examples outside its excluded"):
        check_policy(RetrievalPolicy(k=7, exclude=("t1", "t2")), TRAIN)


def test_shared_demos_come_first_for_every_input_and_are_never_retrieved_again():
    r = Retriever(TRAIN)
    shared = RetrievalPolicy(k=2, shared=("t2", "t0"))
    got = r.retrieve(shared, QUERIES)
    alone = Retriever([ex for ex in TRAIN if ex.id not in ("t2", "t0")]).retrieve(RetrievalPolicy(k=2), QUERIES)
    assert all(ids[:2] == ("t2", "t0") and len(ids) == 4 for ids in got)
    # The rest is retrieval over the train split less the shared demos (t0 was the rain queries' nearest).
    assert [ids[2:] for ids in got[:2]] == alone[:2] and r.retrieve(RetrievalPolicy(k=2), QUERIES)[0] != alone[0]
    cand = Candidate("x", retrieval=shared)
    assert Candidate.from_json(cand.to_json()) == cand and cand.id != Candidate("x", retrieval=RetrievalPolicy(k=2)).id
    assert "shared" not in RetrievalPolicy(k=2).to_json()


@pytest.mark.parametrize("policy, message", [
    (RetrievalPolicy(k=2, shared=("dev-1",)), "shared demo 'dev-1' is not in the train split"),
    (RetrievalPolicy(k=2, shared=("t1",), exclude=("t1",)), "'t1' is not in the train split .or is one of its excl"),
    (RetrievalPolicy(k=7, shared=("t1", "t2")), "k=7 is larger than the train split .6 examples and shared demos"),
])
def test_bad_shared_demos_are_one_line(policy, message):
    with pytest.raises(ConfigError, match=message):
        check_policy(policy, TRAIN)
    with pytest.raises(ConfigError, match="a shared demo is repeated"):
        RetrievalPolicy(shared=("t1", "t1"))


def test_a_k_fold_refit_replaces_a_held_out_shared_demo_by_one_of_its_label():
    from promptopt.measure.final_pick import refit
    cand = Candidate("x", retrieval=RetrievalPolicy(k=2, shared=("t2", "t3")))
    new = refit(cand, ["t3", "t5", "dev-0"], TRAIN, "key")
    policy = new.retrieval
    assert policy.exclude == ("t3", "t5") and policy.shared[0] == "t2" and policy.shared[1] not in ("t3", "t5", "t2")
    assert TRAIN[int(policy.shared[1][1:])].label == TRAIN[3].label and new.origin == "kfold.refit"
    assert refit(cand, ["dev-0"], TRAIN, "key") is cand
    got = Retriever(TRAIN).retrieve(policy, QUERIES)
    assert all(ids[:2] == policy.shared and not set(ids) & {"t3", "t5"} for ids in got)
