from sert import templates as T


def test_mining_prompt_is_the_papers():
    assert T.mining_prompt("Is ice cold?") == "Question: Is ice cold? Answer:"


def test_self_training_target():
    p, c = T.self_training_target("Is ice cold?", "  Ice is  frozen water.\n", "yes")
    assert p + c == "Question: Is ice cold?. Answer: Ice is frozen water. So the answer is yes."


def test_distillation_target():
    p, c = T.distillation_target("Is ice cold?", "Ice is frozen.", "yes")
    assert p + c == "Question: Is ice cold?. Answer: Let's think step by step. Ice is frozen. So the answer is yes."


def test_finetune_target_and_shared_prompt():
    p, c = T.finetune_target("Is ice cold?", "yes")
    assert p + c == "Question: Is ice cold?. Answer: So the answer is yes."
    assert p == T.train_prompt("Is ice cold?")
