"""Small random-initialised models in the shape of the ones people quantize.

Plain-torch versions of the blocks that make torchvision's classifiers what they are
(torchvision wheels on PyPI are CUDA builds that do not load beside a CPU torch): a
ResNet basic block with a downsampling shortcut, MobileNetV2's inverted residual
(depthwise conv, ReLU6), ShuffleNetV2's split/shuffle unit, EfficientNet's MBConv with
squeeze-excitation and SiLU, and a ViT whose encoder uses ``nn.MultiheadAttention`` as
torchvision's does. Transformers builds BERT, GPT-2, Llama and Qwen2 from config objects.
"""

import torch
from torch import nn

from precal.emulate import BLOCK_FORMATS, FloatFormat, format_info, format_names

#: The basic configs every zoo model runs at (one of each family's simplest names).
CONFIGS = ["fp32", "tf32", "fp16", "bf16", "bf16-attn", "fp8_e4m3", "fp8_e5m2", "fp8_e4m3-attn",
           "w8a8", "w8a8-dyn", "w4a8", "w4a4", "w8a16", "w4a16-g32", "w4a16-g32-asym"]
#: Every compute format (with and without ``-attn``), every block format and the weight-only
#: block and MX scale-rounding variants, every PTQ suffix, and the backend-faithful int8 recipe:
#: with :data:`CONFIGS`, every kind of name :func:`precal.emulate.parse_config` accepts
#: (``tests/emulate/test_model_zoo.py`` checks that no family is missing).
FLOATS = [n for n in format_names() if isinstance(format_info(n), FloatFormat) and n != "fp32"]
BLOCKS = sorted(BLOCK_FORMATS) + ["w-mxfp4", "mxfp4-rceil"]
PTQ = ["w4a16-g32-gptq", "w4a16-g32-gptq-actorder", "w4a16-g32-awq", "w8a8-sq"]
EVERY = list(dict.fromkeys(CONFIGS + FLOATS + [f"{f}-attn" for f in FLOATS] + BLOCKS + PTQ + ["w8a8-x86"]))


def _conv_bn(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


def _randomise_batchnorm(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, stride=stride)
        self.conv2 = _conv_bn(cout, cout, act=None)
        self.downsample = _conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.conv2(self.conv1(x)) + self.downsample(x))


class ResNet(nn.Module):
    def __init__(self, n_classes=10):
        super().__init__()
        self.stem = _conv_bn(3, 8)
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.fc = nn.Linear(16, n_classes)

    def forward(self, x):
        return self.fc(self.layer2(self.layer1(self.stem(x))).mean((2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(_conv_bn(cin, hidden, 1, act=nn.ReLU6),
                                   _conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                                   _conv_bn(hidden, cout, 1, act=None))

    def forward(self, x):
        return x + self.block(x) if self.use_res else self.block(x)


class MobileNetV2(nn.Module):
    def __init__(self, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(_conv_bn(3, 8, stride=2, act=nn.ReLU6), InvertedResidual(8, 8, 1, 4),
                                      InvertedResidual(8, 16, 2, 4))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, n_classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def channel_shuffle(x, groups):
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, channels):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(_conv_bn(half, half, 1), _conv_bn(half, half, 3, groups=half, act=None),
                                    _conv_bn(half, half, 1))

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.branch(b)], dim=1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, n_classes=10):
        super().__init__()
        self.conv1 = _conv_bn(3, 16, stride=2)
        self.stage2 = nn.Sequential(ShuffleUnit(16), ShuffleUnit(16))
        self.fc = nn.Linear(16, n_classes)

    def forward(self, x):
        return self.fc(self.stage2(self.conv1(x)).mean((2, 3)))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels, squeeze):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(s))))


class MBConv(nn.Module):
    def __init__(self, cin, cout, expand=4):
        super().__init__()
        hidden = cin * expand
        self.block = nn.Sequential(_conv_bn(cin, hidden, 1, act=nn.SiLU),
                                   _conv_bn(hidden, hidden, 3, groups=hidden, act=nn.SiLU),
                                   SqueezeExcitation(hidden, max(1, cin // 4)),
                                   _conv_bn(hidden, cout, 1, act=None))

    def forward(self, x):
        return x + self.block(x)


class EfficientNet(nn.Module):
    def __init__(self, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(_conv_bn(3, 8, stride=2, act=nn.SiLU), MBConv(8, 8), MBConv(8, 8))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, n_classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class EncoderBlock(nn.Module):
    """torchvision's ViT encoder block: pre-norm attention and MLP with residuals."""

    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    def __init__(self, n_classes=10, image=16, patch=4, dim=32, heads=4, layers=2):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embedding = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.layers = nn.Sequential(*[EncoderBlock(dim, heads, 2 * dim) for _ in range(layers)])
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.layers(x))[:, 0])


VISION = {"resnet": ResNet, "mobilenet_v2": MobileNetV2, "shufflenet_v2": ShuffleNetV2,
          "efficientnet": EfficientNet, "vit": ViT}


def vision_model(name, seed=0):
    torch.manual_seed(seed)
    return _randomise_batchnorm(VISION[name]())


def _recalibrate_batchnorm(model, seed=0, n=64, size=32):
    """BatchNorm running statistics of ``n`` seeded N(0, 1) images, as training would leave them.

    With torchvision's random initialisation and BatchNorm's default statistics (mean 0,
    variance 1), the signal fades through MobileNetV3, ShuffleNetV2 and EfficientNet: their
    logits barely depend on the input (MobileNetV3-small's are ~1e-10, EfficientNet-B0's
    ~1e-14), so "every config changes the logits" would hold for rounding noise alone and an
    argmax comparison would mean nothing. Statistics measured on inputs (each BatchNorm then
    normalises its input to mean 0, variance 1, as in a trained network) give logits of order
    0.03-2 that vary from image to image.
    """
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: exactly the statistics of x
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def torchvision_models():
    """Small random-initialised torchvision classifiers (name -> constructor, eval mode), or None.

    BatchNorm statistics come from seeded inputs (:func:`_recalibrate_batchnorm`); the ViT's
    zero-initialised head is randomised. Build them after ``torch.manual_seed`` for the same weights.

    None when torchvision cannot be imported: PyPI's torchvision fails beside CI's CPU torch
    2.13.0 wheel ("operator torchvision::nms does not exist"); ``docs/emulate.md`` says how to
    run these in a venv with a matching torch/torchvision pair.
    """
    try:
        from torchvision import models
    except Exception:  # noqa: BLE001 - absent, or a CUDA build that fails to load beside a CPU torch
        return None
    from torchvision.models.resnet import BasicBlock as TVBasicBlock

    def vit():
        model = models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                         mlp_dim=64, num_classes=10)
        # torchvision initialises the classification head to zeros (the fine-tuning recipe's
        # start): untrained, every logit is 0 at every config and no test could see a change.
        # Give it nn.Linear's default random initialisation instead.
        model.heads.head.reset_parameters()
        return model

    builders = {
        "tv_resnet": lambda: models.ResNet(TVBasicBlock, [1, 1, 1, 1], num_classes=10),
        "tv_mobilenet_v3_small": lambda: models.mobilenet_v3_small(num_classes=10),
        "tv_shufflenet_v2_x0_5": lambda: models.shufflenet_v2_x0_5(num_classes=10),
        "tv_efficientnet_b0": lambda: models.efficientnet_b0(num_classes=10),
        "tv_vit": vit,
    }
    return {name: (lambda build=build: _recalibrate_batchnorm(build())) for name, build in builders.items()}


def hf_model(name, seed=0):
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=96)
    if name == "bert":
        cfg = transformers.BertConfig(num_attention_heads=2, num_labels=3, max_position_embeddings=32, **common)
        return transformers.BertForSequenceClassification(cfg).eval()
    if name == "gpt2":
        cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=96, n_positions=32,
                                      bos_token_id=1, eos_token_id=1)
        return transformers.GPT2LMHeadModel(cfg).eval()
    if name == "llama":
        cfg = transformers.LlamaConfig(num_attention_heads=4, num_key_value_heads=2, bos_token_id=1,
                                       eos_token_id=1, **common)
        return transformers.LlamaForCausalLM(cfg).eval()
    if name == "qwen2":
        cfg = transformers.Qwen2Config(num_attention_heads=4, num_key_value_heads=2, bos_token_id=1,
                                       eos_token_id=1, **common)
        return transformers.Qwen2ForCausalLM(cfg).eval()
    raise ValueError(name)
