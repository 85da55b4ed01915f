"""Encoders of low-dimensional signals: GPS (Fourier-feature MLP), the 64-beam power vector (the wireless
anchor of vehicle scenes), a sequence of past beam powers, and WiFi CSI amplitude (anchor of human scenes)."""
from __future__ import annotations

import torch
from torch import nn

from encoders.base import EncoderConfig, EncoderOutput, fourier_features, register, zero_absent


def power_db(p: torch.Tensor) -> torch.Tensor:
    """Linear beam power → dB relative to the vector's maximum, scaled to about [-1, 0], plus the level."""
    db = 10.0 * torch.log10(p.clamp(min=1e-12))
    top = db.amax(-1, keepdim=True)
    return torch.cat([(db - top) / 20.0, (top / 20.0).expand_as(db)], -1)


class _Tokens(nn.Module):
    """pooled (B, d) → n_f tokens (B, n_f, d)."""

    def __init__(self, d: int, n: int):
        super().__init__()
        self.n, self.lin, self.norm = n, nn.Linear(d, n * d), nn.LayerNorm(d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.lin(h).view(h.shape[0], self.n, -1))


@register("gps")
class GPSEncoder(nn.Module):
    """(east, north) metres → Fourier features at ``n_freq`` octaves of 1/``scale`` → MLP."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.scale = float(cfg.options.get("scale", 50.0))
        n_freq = int(cfg.options.get("n_freq", 6))
        self.register_buffer("freqs", (2.0 ** torch.arange(n_freq)) * torch.pi)
        d_in = 2 + 4 * n_freq
        self.mlp = nn.Sequential(nn.Linear(d_in, cfg.d), nn.GELU(), nn.Linear(cfg.d, cfg.d), nn.GELU(),
                                 nn.Linear(cfg.d, cfg.d))
        self.tokens = _Tokens(cfg.d, cfg.n_tokens)

    def forward(self, batch: dict) -> EncoderOutput:
        x = batch["gps"][:, :2].float() / self.scale
        h = self.mlp(torch.cat([x, fourier_features(x, self.freqs)], -1))
        return zero_absent(EncoderOutput(self.tokens(h), h), batch["present"].get("gps"))


class _BeamSequence(nn.Module):
    """A transformer over the beams of one power vector (each beam a token with its index embedding)."""

    def __init__(self, n_beams: int, d: int, n_tokens: int, layers: int = 2):
        super().__init__()
        self.inp = nn.Linear(2, d)
        self.pos = nn.Parameter(torch.randn(n_beams, d))  # unit scale: beam identity must not wash out
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=2 * d, batch_first=True, norm_first=True,
                                           dropout=0.0)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.pool = nn.AdaptiveAvgPool1d(n_tokens)
        self.norm = nn.LayerNorm(d)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        f = power_db(p)
        n = p.shape[-1]
        x = self.inp(torch.stack([f[..., :n], f[..., n:]], -1)) + self.pos
        return self.norm(self.enc(x))


@register("beam")
class BeamEncoder(nn.Module):
    """The 64-beam received-power vector (dB, normalised to its maximum). The pooled embedding is an MLP of
    the whole vector (it must keep *where* the peak is); the tokens come from a transformer over the beams."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        n_beams = int(cfg.options.get("n_beams", 64))
        self.mlp = nn.Sequential(nn.Linear(2 * n_beams, cfg.d), nn.GELU(), nn.Linear(cfg.d, cfg.d), nn.GELU(),
                                 nn.Linear(cfg.d, cfg.d))
        self.seq = _BeamSequence(n_beams, cfg.d, cfg.n_tokens)

    def forward(self, batch: dict) -> EncoderOutput:
        p = batch["beam"].float()
        h = self.seq(p)
        tokens = self.seq.pool(h.transpose(1, 2)).transpose(1, 2)
        return zero_absent(EncoderOutput(tokens, self.mlp(power_db(p))), batch["present"].get("beam"))


@register("past_beam")
class PastBeamEncoder(nn.Module):
    """T past power vectors: each step → an MLP embedding, then a transformer over time; tokens are time
    steps pooled to n_f."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        n_beams, d = int(cfg.options.get("n_beams", 64)), cfg.d
        self.step = nn.Sequential(nn.Linear(2 * n_beams, d), nn.GELU(), nn.Linear(d, d))
        self.time = nn.Parameter(torch.randn(int(cfg.options.get("max_steps", 32)), d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=2 * d, batch_first=True, norm_first=True,
                                           dropout=0.0)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.pool = nn.AdaptiveAvgPool1d(cfg.n_tokens)
        self.norm = nn.LayerNorm(d)

    def forward(self, batch: dict) -> EncoderOutput:
        p = batch["past_beam"].float()
        t = p.shape[1]
        h = self.norm(self.enc(self.step(power_db(p)) + self.time[:t]))
        tokens = self.pool(h.transpose(1, 2)).transpose(1, 2)
        return zero_absent(EncoderOutput(tokens, h[:, -1]), batch["present"].get("past_beam"))


@register("wifi")
class WiFiEncoder(nn.Module):
    """CSI amplitude (3 antennas x 114 subcarriers x 10 packets): log-amplitude, a small CNN over
    (subcarrier, packet) with antennas as channels; tokens are groups of subcarriers.

    With ``window`` K > 0 it reads the frame's CSI after up to K previous frames' (``past_wifi``): the
    packets of the window in time order, a fourth input channel marking real packets (a frame without a
    full past is padded at the oldest end), strides over time, and the time axis averaged over real
    packets only. WiFi sensing reads the body's motion from how the channel changes over about a second;
    one frame holds 0.1 s. K = 0 is the frame alone (the encoder of checkpoints written before the window).

    ``motion`` (window only): ``standardised`` divides the window's motion (the log-amplitude minus its mean
    over the window's real packets) by its RMS over the sample and adds log10 of that RMS as a fifth input
    channel, as the point encoders standardise a cloud; ``raw`` (checkpoints written before it) feeds the
    motion as it is. Raw, the twin's motion (RMS 0.086) sits beside a mask channel of 1, and a randomly
    initialised encoder's embeddings barely move with it (spread over samples 1.99 with the motion, 1.94
    with it removed): at one stage-one seed of three the WiFi embeddings collapsed to one point
    (docs/measurements.md, 2026-12-07).
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.window = int(cfg.options.get("window", 0))
        if self.window < 0:
            raise ValueError(f"WiFi window must be >= 0 previous frames, got {self.window}")
        self.motion = cfg.options.get("motion", "raw")
        if self.motion not in ("raw", "standardised"):
            raise ValueError(f"WiFi motion must be raw or standardised, got {self.motion!r}")
        c, t = cfg.d // 4, 2 if self.window else 1  # stride over packets
        k = 5 if self.window else 3
        channels = (5 if self.motion == "standardised" else 4) if self.window else 3
        self.net = nn.Sequential(
            nn.Conv2d(channels, c, (7, k), stride=(2, t), padding=(3, k // 2)), nn.GroupNorm(4, c),
            nn.GELU(),
            nn.Conv2d(c, cfg.d // 2, (5, k), stride=(2, t), padding=(2, k // 2)), nn.GroupNorm(8, cfg.d // 2),
            nn.GELU(),
            nn.Conv2d(cfg.d // 2, cfg.d, (3, 3), padding=1), nn.GELU())
        self.pool = nn.AdaptiveAvgPool2d((cfg.n_tokens, 1))
        self.n_tokens = cfg.n_tokens
        self.norm = nn.LayerNorm(cfg.d)

    def forward(self, batch: dict) -> EncoderOutput:
        present = batch["present"].get("wifi")
        if not self.window:
            x = torch.log1p(batch["wifi"].float().clamp(min=0))
            h = self.net(x - x.mean(dim=(1, 2, 3), keepdim=True))  # log-amplitude centred per frame (AGC-free)
            tokens = self.norm(self.pool(h).squeeze(-1).transpose(1, 2))
            return zero_absent(EncoderOutput(tokens, tokens.mean(1)), present)
        frames, real = self.window_frames(batch)  # (B, K+1, 3, S, P), (B, K+1)
        b, n, a, s, p = frames.shape
        x = torch.log1p(frames.clamp(min=0)).permute(0, 2, 3, 1, 4).reshape(b, a, s, n * p)
        m = real.repeat_interleave(p, 1).to(x.dtype)[:, None, None]  # (B, 1, 1, (K+1) P)
        mean = (x * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True)  # per antenna and subcarrier
        motion, mask = (x - mean) * m, m.expand(b, 1, s, n * p)
        extra = []
        if self.motion == "standardised":
            rms = (motion.pow(2).sum((1, 2, 3)) / (mask.sum((1, 2, 3)) * a)).sqrt()  # (B,) over real packets
            motion = motion / rms.clamp(min=1e-3)[:, None, None, None]
            extra = [torch.log10(rms.clamp(min=1e-3))[:, None, None, None] * mask]  # how strong the motion is
        h = self.net(torch.cat([motion, mask, *extra], 1))
        w = nn.functional.interpolate(m[:, :, 0], size=h.shape[-1], mode="nearest")[:, :, None]  # (B, 1, 1, T')
        h = (h * w).sum(-1) / w.sum(-1).clamp(min=1.0)  # (B, d, S'): mean over real time steps
        tokens = self.norm(nn.functional.adaptive_avg_pool1d(h, self.n_tokens).transpose(1, 2))
        return zero_absent(EncoderOutput(tokens, tokens.mean(1)), present)

    def window_frames(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The last ``window`` past frames and the current one, oldest first, and which of them are real."""
        cur = batch["wifi"].float()
        b, k = cur.shape[0], self.window
        frames = cur.new_zeros(b, k + 1, *cur.shape[1:])
        real = torch.zeros(b, k + 1, dtype=torch.bool, device=cur.device)
        frames[:, -1], real[:, -1] = cur, True
        past = batch.get("past_wifi")
        if past is not None and past.shape[1]:
            take = min(k, past.shape[1])
            frames[:, k - take: k] = past[:, -take:].float()
            real[:, k - take: k] = batch["past_wifi_mask"][:, -take:]  # False for rows without past frames
        return frames, real
