"""transformers integration (the `hf` extra): huginn-format directories through `AutoModelForCausalLM`.

    import latentloop.hf  # registers model_type "huginn_raven" with AutoConfig and AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(directory)  # trust_remote_code not needed
    model.generate(ids, num_steps=32, max_new_tokens=20)
    latentloop.generate(model.latentloop_model, ids, exit="kl:5e-4")  # the whole latentloop feature set

Importing this package registers the classes; `register()` does it again (harmless), for code that
wants the registration to be explicit.
"""

from __future__ import annotations

try:
    import transformers
except ImportError as err:  # the integration is an optional extra
    raise ImportError(f"latentloop.hf needs transformers>=5 ({err}): pip install 'latentloop[hf]'") from err

if int(transformers.__version__.split(".")[0]) < 5:
    raise ImportError(f"latentloop.hf needs transformers>=5, found {transformers.__version__}: "
                      "pip install -U 'latentloop[hf]'")

from .cache import RecurrentCache  # noqa: E402
from .config import HuginnConfig  # noqa: E402
from .modeling import RavenForCausalLM, RecurrentCausalLMOutput  # noqa: E402
from .register import register  # noqa: E402
from .tokenizer import hf_tokenizer, save_hf_tokenizer  # noqa: E402

__all__ = ["HuginnConfig", "RavenForCausalLM", "RecurrentCache", "RecurrentCausalLMOutput", "hf_tokenizer",
           "register", "save_hf_tokenizer"]

register()
