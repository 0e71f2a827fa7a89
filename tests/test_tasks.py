"""Reasoning tasks: seeded generators, disjoint splits, correct answers, exact scoring."""

import json

import numpy as np
import pytest
import torch

from latentloop.tasks import TASKS, exact_match, get_task, task_from_dir, teacher_forced_correct
from latentloop.tasks.addition import Addition
from latentloop.tasks.base import IGNORE
from latentloop.tasks.circuit import Circuit
from latentloop.tasks.modchain import ModChain
from latentloop.tasks.pointers import Pointers


def evaluate_chain(text: str) -> int:
    """Independent left-to-right evaluation of one chain such as '4+3*7-2'."""
    value = int(text[0])
    for op, digit in zip(text[1::2], text[2::2], strict=True):
        value = eval(f"{value}{op}{digit}") % 10
    return value


def evaluate_circuit(prompt: str, modulus: int = 10) -> tuple[list[int], list[int]]:
    """Independent evaluation of a circuit prompt such as '0703120=': each item's value and depth."""
    values, depths = [], []
    for i in range(0, len(prompt) - 1, 2):
        x, y = int(prompt[i]), int(prompt[i + 1])
        here = len(values)
        if x == 0:  # an input
            values.append(y)
            depths.append(0)
        else:
            values.append(values[here - x] if x == y else (values[here - x] + values[here - y]) % modulus)  # xx: copy
            depths.append(1 + max(depths[here - x], depths[here - y]))
    return values, depths


def pointer_target(prompt: str, here: int) -> int:
    """Where the pointer at `here` points: `a`/`A` one item back, `b`/`B` two, ..."""
    return here - (ord(prompt[here].lower()) - ord("a") + 1)


def follow_pointers(prompt: str) -> tuple[list[int], list[int], list[int]]:
    """Independent evaluation of a pointers prompt such as '7a3B=': each item's value, depth and root."""
    values, depths, roots = [], [], []
    for here, char in enumerate(prompt.rstrip("=")):
        if char.isdigit():
            values.append(int(char))
            depths.append(0)
            roots.append(here)
        else:
            target = pointer_target(prompt, here)
            values.append((values[target] + char.isupper()) % 10)
            depths.append(depths[target] + 1)
            roots.append(roots[target])
    return values, depths, roots


def chain_to_root(prompt: str) -> list[int]:
    """Positions of the chain that ends at the last item, last item first, down to its root."""
    chain = [len(prompt.rstrip("=")) - 1]
    while not prompt[chain[-1]].isdigit():
        chain.append(pointer_target(prompt, chain[-1]))
    return chain


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generators_are_deterministic_per_seed(name):
    task = get_task(name)
    for split in ("train", "validation", "test"):
        assert task.problems(split, 50, seed=3) == task.problems(split, 50, seed=3)
        assert task.problems(split, 50, seed=3) != task.problems(split, 50, seed=4)
    a, b = task.batch(np.random.default_rng(7), 16), task.batch(np.random.default_rng(7), 16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_splits_do_not_overlap(name):
    task = get_task(name)
    train = {p.prompt for p in task.problems("train", 3000)}
    validation = task.problems("validation", 300)
    test = task.problems("test", 300)
    assert not train & {p.prompt for p in validation}
    assert not train & {p.prompt for p in test} and not {p.prompt for p in validation} & {p.prompt for p in test}
    assert all(task.in_validation(p) for p in validation) and not any(task.in_validation(p) for p in
                                                                      task.problems("train", 300))
    lo, hi = task.train_difficulty
    assert all(lo <= p.difficulty <= hi for p in validation)
    assert all(p.difficulty > hi for p in test)


def test_modchain_answers_are_correct():
    task = ModChain(chains=2)
    for p in task.problems("train", 200) + task.problems("test", 50):
        chains = p.prompt.rstrip("=").split(",")
        assert p.answer == "".join(str(evaluate_chain(c)) for c in chains)
        assert all(len(c) == 2 * p.difficulty + 1 for c in chains)
        assert set(c[i] for c in chains for i in range(2, len(c), 2) if c[i - 1] == "*") <= set("379")


def test_mixed_lengths_put_one_longer_chain_inside_a_training_length():
    task = ModChain(train_ops=(1, 12), test_ops=(13, 20), chains=2, mixed_lengths=True)
    longest_training_prompt = 2 * (2 * 12 + 1) + 2  # two chains, a comma and "="
    train, test = task.problems("train", 400), task.problems("test", 200)
    for p in train + test:
        chains = p.prompt.rstrip("=").split(",")
        ops = [len(c) // 2 for c in chains]
        assert p.answer == "".join(str(evaluate_chain(c)) for c in chains)
        assert max(ops) == p.difficulty and len(p.prompt) <= longest_training_prompt
    assert any(len(set(len(c) for c in p.prompt.split(","))) > 1 for p in train)  # lengths differ
    assert {p.prompt.index(",") > 2 * 12 + 1 for p in test} == {True, False}  # the long chain goes either way
    assert all(p.difficulty > 12 for p in test)
    with pytest.raises(ValueError, match=r"lower test_ops\[1\] to at most 23"):
        ModChain(train_ops=(1, 12), test_ops=(13, 24), chains=2, mixed_lengths=True)


@pytest.mark.parametrize(("modulus", "fan_in"), [(10, 2), (3, 2), (10, 1)])
def test_circuit_answers_depths_and_one_length(modulus, fan_in):
    task = Circuit(inputs=4, gates=20, train_depth=(4, 8), test_depth=(12, 20), partial_labels=True, modulus=modulus,
                   fan_in=fan_in)
    problems = task.problems("train", 300) + task.problems("test", 100)
    assert {int(p.answer) for p in problems} == set(range(modulus))
    assert all((p.prompt[i] == p.prompt[i + 1]) == (fan_in == 1) for p in problems for i in range(8, 48, 2))
    for p in problems:
        values, depths = evaluate_circuit(p.prompt, modulus)
        assert p.answer == str(values[-1]) and depths[-1] == p.difficulty  # the last gate is the deepest
        assert len(p.prompt) == 2 * 24 + 1 and p.prompt.endswith("=")  # every problem has the same length
        assert depths == sorted(depths) and max(b - a for a, b in zip(depths, depths[1:], strict=False)) <= 1
    assert {p.difficulty for p in problems} == set(range(4, 9)) | set(range(12, 21))
    ids, labels = task.encode(problems[:1], partial_labels=True)
    values, _ = evaluate_circuit(problems[0].prompt, modulus)
    prompt = problems[0].prompt
    for item, value in enumerate(values):  # each item's value at its second character ...
        assert task.tokenizer.decode([int(labels[0, 2 + 2 * item])]) == str(value)
        first = int(prompt[2 * item])  # ... and a gate's first input at its first (inputs: nothing)
        expected = IGNORE if first == 0 else task.tokenizer.encode(str(values[item - first]))[0]
        assert labels[0, 1 + 2 * item] == expected
    with pytest.raises(ValueError, match=r"must lie within 3-20 for 20 gates"):
        Circuit(gates=20, train_depth=(2, 8), test_depth=(12, 20))
    with pytest.raises(ValueError, match="inputs must be >= 2"):
        Circuit(inputs=1)
    with pytest.raises(ValueError, match="modulus must be 2-10"):
        Circuit(modulus=11)
    with pytest.raises(ValueError, match="fan_in must be 1"):
        Circuit(fan_in=3)


def test_circuit_levels_are_the_gate_depths():
    task = Circuit(partial_labels=True)
    prompt = task.problems("test", 1)[0].prompt
    _, depths = evaluate_circuit(prompt)
    assert task.levels(prompt) == [*(level for d in depths for level in (None, d)), None]


def test_pointers_answers_depths_and_one_length():
    task = Pointers(items=48, train_depth=(4, 8), test_depth=(16, 22), reach=2, partial_labels=True)
    train, test = task.problems("train", 300), task.problems("test", 200)
    assert task.problems("test", 3, seed=5) == task.problems("test", 3, seed=5)
    for p in train + test:
        values, depths, _ = follow_pointers(p.prompt)
        assert 2 * p.difficulty + 1 <= len(p.prompt) - 1 <= 48
        assert p.answer == str(values[-1]) and depths[-1] == p.difficulty
        assert task.levels(p.prompt) == [*depths, None]
        chain = chain_to_root(p.prompt)  # its gaps stay within reach
        assert max(a - b for a, b in zip(chain, chain[1:], strict=False)) <= 2
    assert {int(p.answer) for p in test} == set(range(10))
    assert {p.difficulty for p in train + test} == set(range(4, 9)) | set(range(16, 23))
    assert len({len(p.prompt) for p in train}) > 20  # rows of many lengths
    ids, labels = task.encode(train[:1], partial_labels=True)  # every item's value at the item
    values, _, _ = follow_pointers(train[0].prompt)
    assert [task.tokenizer.decode([int(t)]) for t in labels[0, 1 : len(values) + 1]] == [str(v) for v in values]
    with pytest.raises(ValueError, match="reach must be 1-9"):
        Pointers(reach=10)
    with pytest.raises(ValueError, match="raise items to at least 89"):
        Pointers(items=60, test_depth=(36, 44))
    with pytest.raises(ValueError, match="raise items to at least 89 or lower reach"):
        Pointers(items=80, test_depth=(36, 44), reach=2)


@pytest.mark.parametrize("increments", [0.0, 0.5])
def test_pointers_leave_no_layout_shortcut(increments):
    """The root is rarely the first or the latest input, and every pointer of a row, on the main chain
    or not, reaches 1 to `reach` items back: no letter marks the chain that matters."""
    task = Pointers(reach=3, increments=increments)
    for split in ("train", "test"):
        first = latest = 0
        for p in task.problems(split, 200):
            _, _, roots = follow_pointers(p.prompt)
            inputs = [i for i, c in enumerate(p.prompt) if c.isdigit()]
            first += roots[-1] == inputs[0]
            latest += roots[-1] == inputs[-1]
            assert set(p.prompt) - set("0123456789=") <= set("abcABC")
        assert first / 200 < 0.1 and latest / 200 < 0.1, (split, first, latest)


def test_pointer_increments_make_every_hop_count():
    """Capitals add one to the value they copy, as often on the main chain as off it; the answer is
    then rarely the root's own value, so finding the root without following the chain is no answer."""
    task = Pointers(increments=0.5, partial_labels=True)
    on_chain, off_chain, root_value = [], [], 0
    for p in task.problems("train", 150) + task.problems("test", 50):
        values, depths, roots = follow_pointers(p.prompt)
        assert p.answer == str(values[-1]) and depths[-1] == p.difficulty
        assert p.partials[:-1] == tuple(str(v) for v in values)
        chain = set(chain_to_root(p.prompt))
        for i, char in enumerate(p.prompt[:-1]):
            if char.isalpha():
                (on_chain if i in chain else off_chain).append(char.isupper())
        root_value += p.answer == p.prompt[roots[-1]]
    assert abs(sum(on_chain) / len(on_chain) - 0.5) < 0.05 and abs(sum(off_chain) / len(off_chain) - 0.5) < 0.05
    assert root_value / 200 < 0.25
    assert not set("".join(p.prompt for p in Pointers().problems("train", 50))) & set("ABCDEFGHI")
    with pytest.raises(ValueError, match="increments is the chance that a pointer adds one: give 0-1"):
        Pointers(increments=1.5)


def test_addition_answers_and_carry_chains():
    task = Addition(digits=8, train_chain=(0, 3), test_chain=(4, 7))
    for p in task.problems("train", 100) + task.problems("test", 100):
        a, b = p.prompt.rstrip("=").split("+")
        assert len(a) == len(b) == 8 and p.answer == f"{int(a) + int(b):09d}"
        sums = [int(x) + int(y) for x, y in zip(a, b, strict=True)]
        runs = "".join("9" if s == 9 else "x" for s in sums).split("x")
        assert max(len(r) for r in runs) == p.difficulty  # the planted chain is the longest run of 9s


def test_encode_labels_only_the_answer_and_end():
    task = ModChain(chains=1)
    problem = task.problems("validation", 1)[0]
    ids, labels = task.encode([problem])
    tok = task.tokenizer
    text = tok.decode(ids[0].tolist())
    assert text == f"<|begin_text|>{problem.prompt}{problem.answer}<|end_text|>"
    supervised = labels[0][labels[0] != IGNORE].tolist()
    assert supervised == [*tok.encode(problem.answer), tok.eos_id]
    # labels are shifted: each supervised position's label is the next input token
    positions = (labels[0] != IGNORE).nonzero().flatten()
    assert torch.equal(labels[0, positions], ids[0, positions + 1])


def test_partial_labels_give_the_value_so_far():
    task = ModChain(chains=1, partial_labels=True)
    problem = task.problems("train", 1, seed=5)[0]
    ids, labels = task.encode([problem], partial_labels=True)
    chain = problem.prompt.rstrip("=")
    for j in range(0, len(chain), 2):  # every digit closes the prefix chain[: j + 1]
        assert task.tokenizer.decode([int(labels[0, 1 + j])]) == str(evaluate_chain(chain[: j + 1]))
    assert all(labels[0, 1 + j] == IGNORE for j in range(1, len(chain), 2))  # operators: nothing


def test_scoring_is_exact():
    task = ModChain(chains=2)
    problems = task.problems("validation", 3)
    answers = [p.answer for p in problems]
    assert exact_match(answers, problems) == [True] * 3
    near = [answers[0][:-1] + str((int(answers[0][-1]) + 1) % 10), answers[1] + "0", answers[2][:1]]
    assert exact_match(near, problems) == [False] * 3
    with pytest.raises(ValueError, match="predictions"):
        exact_match(answers[:2], problems)
    ids, labels = task.encode(problems)
    perfect = torch.nn.functional.one_hot(labels.clamp(min=0), task.vocab_size).float()
    assert teacher_forced_correct(perfect, labels).all()
    one_wrong = perfect.clone()
    last = (labels[1] != IGNORE).nonzero().flatten()[-1]
    one_wrong[1, last] = one_wrong[1, last].roll(1)
    assert teacher_forced_correct(one_wrong, labels).tolist() == [True, False, True]


def test_bad_arguments_are_reported(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(ValueError, match="bad arguments for task 'modchain'"):
        get_task("modchain", digits=3)
    with pytest.raises(ValueError, match="must lie above"):
        get_task("modchain", train_ops=(1, 12), test_ops=(10, 20))
    with pytest.raises(ValueError, match="unknown split"):
        ModChain().problems("dev", 1)
    with pytest.raises(FileNotFoundError, match="task.json"):
        task_from_dir(tmp_path)
    (tmp_path / "task.json").write_text(json.dumps({"name": "addition", "args": {"digits": 6, "test_chain": [6, 7]}}))
    with pytest.raises(ValueError, match="test_chain"):
        task_from_dir(tmp_path)


def test_char_tokenizer_round_trips():
    task = ModChain()
    text = "4+3*7-2,9*9=58"
    assert task.tokenizer.decode(task.tokenizer.encode(text)) == text
    assert task.vocab_size == 3 + len(task.alphabet)
