"""See it drive: the camera view with the action, speed and feature L2 overlaid, as MP4 or GIF.

:class:`DriveRecorder` is a runtime tap (it sees every published message): it keeps the
newest control, speed, actor feature L2 and episode number, and writes one video frame
per camera image.  Nothing here knows about ROS; it reads message fields only.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from td3_drive.driving.observation import decode_image
from td3_drive.topics import Topics

VIDEO_SUFFIXES = (".mp4", ".gif")
#: output height in pixels; the camera image is scaled up to it (nearest: keep the pixels honest)
VIDEO_HEIGHT = 360
_TEXT = (255, 255, 255)
_SHADOW = (0, 0, 0)


def overlay(image_bgr: np.ndarray, lines: list[str], steer: float, throttle: float, brake: float,
            height: int = VIDEO_HEIGHT) -> np.ndarray:
    """``image_bgr`` scaled to ``height`` with text lines (top left) and steer/pedal bars (bottom)."""
    scale = height / image_bgr.shape[0]
    out = cv2.resize(image_bgr, (int(round(image_bgr.shape[1] * scale)), height),
                     interpolation=cv2.INTER_NEAREST)
    if lines:  # a dark panel behind the text keeps it readable on any background
        panel = out[4: 12 + 20 * len(lines), 4: min(out.shape[1] - 4, 330)]
        panel[:] = (panel * 0.35).astype(np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(out, line, (8, 22 + 20 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, _TEXT, 1, cv2.LINE_AA)
    h, w = out.shape[:2]
    centre, half, y = w // 2, w // 3, h - 14
    cv2.rectangle(out, (centre - half, y - 6), (centre + half, y + 6), _SHADOW, -1)  # steer: -1 left .. +1 right
    cv2.rectangle(out, (centre, y - 5), (centre + int(half * max(-1.0, min(1.0, steer))), y + 5), (0, 200, 255), -1)
    for value, colour, x in ((throttle, (0, 200, 0), w - 24), (brake, (0, 0, 230), w - 12)):  # pedals, bottom up
        cv2.rectangle(out, (x, h - 80), (x + 8, h - 20), _SHADOW, -1)
        cv2.rectangle(out, (x, h - 20 - int(60 * max(0.0, min(1.0, value)))), (x + 8, h - 20), colour, -1)
    return out


def check_video_path(path: str | Path) -> Path:
    """``path`` as a Path if it names a format the recorder writes; ValueError otherwise."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"--video must end in {' or '.join(VIDEO_SUFFIXES)}, got {path}")
    return path


class DriveRecorder:
    """Runtime tap that writes the ego camera with an overlay to ``path`` (.mp4, or .gif)."""

    def __init__(self, path: str | Path, topics: Topics | None = None, fps: float = 20.0, every: int | None = None,
                 max_episodes: int = 0, height: int = VIDEO_HEIGHT) -> None:
        self.path = check_video_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.topics = topics or Topics()
        # a GIF of every tick is several times larger than the MP4: GIFs keep every second frame by default
        self.fps, self.every = fps, max(1, int(every if every is not None else 2 if self.path.suffix.lower() == ".gif" else 1))
        self.max_episodes, self.height = int(max_episodes), int(height)  # max_episodes 0: all
        self.episodes_seen = 0
        self.frames_written = 0
        self._images_seen = 0
        self._control = (0.0, 0.0, 0.0)
        self._speed = 0.0
        self._feature_l2 = math.nan
        self._episode = ""
        self._writer: cv2.VideoWriter | None = None
        self._gif_frames: list[np.ndarray] = []

    def __call__(self, topic: str, type_name: str, msg: Any, t: float) -> None:
        tp = self.topics
        if topic == tp.control:
            self._control = (float(msg.steer), float(msg.throttle), float(msg.brake))
        elif topic == tp.speedometer:
            self._speed = float(msg.data)
        elif topic == tp.features("actor", "l2_norm"):
            self._feature_l2 = float(msg.data)
        elif topic == tp.episode_start:
            self._episode = msg.frame_id
            self.episodes_seen += 1
        elif topic == tp.camera and (not self.max_episodes or self.episodes_seen <= self.max_episodes):
            self._images_seen += 1
            if (self._images_seen - 1) % self.every == 0:
                self._write(msg, t)

    def _write(self, msg: Any, t: float) -> None:
        image = decode_image(msg)
        bgr = np.ascontiguousarray(image[..., :3] if msg.encoding.startswith("bgr") else image[..., 2::-1])
        steer, throttle, brake = self._control
        frame = overlay(bgr, [
            f"episode {self._episode}  t={t:6.1f} s",
            f"speed {self._speed * 3.6:5.1f} km/h",
            f"steer {steer:+.2f}  throttle {throttle:.2f}  brake {brake:.2f}",
            f"actor feature L2 {self._feature_l2:.1f}" if math.isfinite(self._feature_l2) else "no actor features",
        ], steer, throttle, brake, self.height)
        if self.path.suffix.lower() == ".gif":
            self._gif_frames.append(frame[..., ::-1].copy())  # RGB for PIL
        else:
            if self._writer is None:
                self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                               (frame.shape[1], frame.shape[0]))
                if not self._writer.isOpened():
                    raise RuntimeError(f"cannot open a video writer for {self.path}")
            self._writer.write(frame)
        self.frames_written += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._gif_frames:
            from PIL import Image

            images = [Image.fromarray(f) for f in self._gif_frames]
            images[0].save(self.path, save_all=True, append_images=images[1:], loop=0,
                           duration=int(round(1000 * self.every / self.fps)))
            self._gif_frames = []


def read_frames(path: str | Path) -> list[np.ndarray]:
    """Decoded frames of an MP4 or GIF written by :class:`DriveRecorder` (BGR), for checks and reports."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        from PIL import Image, ImageSequence

        with Image.open(path) as gif:
            return [np.asarray(f.convert("RGB"))[..., ::-1] for f in ImageSequence.Iterator(gif)]
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames
