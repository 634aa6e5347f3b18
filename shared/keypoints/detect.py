"""Multi-person 2D keypoints with the TFLite models that ship inside the mediapipe wheel.

This re-implements, in numpy and OpenCV, the parts of mediapipe's holistic graph that bodyserve
needs, but for every person in a still image rather than for the single tracked person of a
video stream. Constants come from the expanded graph configs of mediapipe 0.10.21 (the
``PoseDetectionCpu``, ``PoseLandmarkByRoiCpu``, ``HandLandmarksFromPoseCpu`` and
``HandLandmarkCpu`` subgraphs, as compiled into the wheel's ``*.binarypb`` graphs).

1. **People** (``pose_detection.tflite``, BlazePose's face-anchored person detector): a window of
   the image is letterboxed to 224x224 (values in ``[-1, 1]``), the 2254 SSD anchors are decoded
   as ``TensorsToDetectionsCalculator`` does (sigmoid scores, threshold 0.5) and weighted
   non-maximum suppression (IoU 0.3) merges overlapping candidates. When the full-frame pass
   finds nobody, or also weak candidates (score >= 0.05) that are no confident person's, which
   is what people too small for it look like, square tiles of half the long side, overlapping
   by half, run too and give small people twice the detector pixels; a tile's detection counts
   only if the tile saw that person whole, and one face found by several windows counts once.
2. **Body** (``pose_landmark_full.tflite``; the "full" model is the only one bundled offline): the
   rotated region of interest comes from the detection's two alignment keypoints (mid-hip centre
   and the "full body" scale point; rotated so the body points up, square), is cropped from the
   full-resolution image (through a pyramid of halvings, so big crops do not alias) to 256x256
   (values in ``[0, 1]``), and the 33 landmarks are refined on the model's heatmap (7x7 kernel)
   and mapped back to image pixels. A second pass re-crops around the landmarks' own alignment
   points, as mediapipe does on the next video frame, with mediapipe's 1.25 enlargement; the
   first, from the detector, is not enlarged, which keeps the landmark model on the detected
   person in a group. A person whose pose-presence flag is below 0.5 is dropped as a false
   detection, as is a body far from the detector's hips and shoulders (the model latched onto a
   neighbour); of two detections that end on the same body, the more confident one stays.
3. **Hands** (``hand_recrop.tflite`` then ``hand_landmark_full.tflite``), for each side whose
   pose wrist is visible, as in ``HandLandmarksFromPoseCpu``: a rough ROI from the pose wrist,
   pinky and index, the recrop model's two alignment points for a tight rotated ROI, then 21
   landmarks on a 224x224 crop. The hand is kept when the hand-presence score reaches 0.5, its
   wrist lies on the body's wrist at a plausible scale, and the handedness output does not
   confidently say it is the other hand (it is often unsure for hands seen edge-on or from the
   back).

Confidence of a body landmark is ``sigmoid(visibility) * sigmoid(presence)``, the two
probabilities mediapipe reports per landmark (not occluded, and inside the crop); hand landmarks
carry the hand-presence score. A person's score is the detection score times the pose-presence
flag. Coordinates are in pixels of the original image, continuous (the centre of the top-left
pixel is ``(0.5, 0.5)``). ``extras`` holds ``body_world`` (33, 3) and ``{left,right}_hand_world``
(21, 3), the models' metric 3D landmarks (metres, hip- or hand-centred, rotated like the image
ROI as mediapipe's ``WorldLandmarkProjectionCalculator`` does), the ``pose_presence`` and
``detection_score`` behind ``score``, and ``{left,right}_handedness`` (agreement, 0..1).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import cv2
import mediapipe
import numpy as np
from ai_edge_litert.interpreter import Interpreter

from shared.keypoints.formats import PersonKeypoints

logger = logging.getLogger(__name__)

# --- constants from mediapipe's graphs (mediapipe/modules/*/...pbtxt, 0.10.21) ---------------

DETECTION_SIZE: Final[int] = 224
POSE_LANDMARK_SIZE: Final[int] = 256
HAND_RECROP_SIZE: Final[int] = 256
HAND_LANDMARK_SIZE: Final[int] = 224

MIN_DETECTION_SCORE: Final[float] = 0.5  # TensorsToDetectionsCalculator.min_score_thresh
NMS_IOU: Final[float] = 0.3  # NonMaxSuppressionCalculator.min_suppression_threshold
MIN_POSE_PRESENCE: Final[float] = 0.5  # ThresholdingCalculator on the pose flag
MIN_WRIST_VISIBILITY: Final[float] = 0.1  # HandVisibilityFromHandLandmarksFromPose
MIN_HAND_PRESENCE: Final[float] = 0.5  # ThresholdingCalculator on the hand flag

POSE_ROI_SCALE: Final[float] = 1.25  # PoseDetectionToRoi / PoseLandmarksToRoi
HAND_FROM_POSE_SCALE: Final[float] = 2.7  # HandLandmarksFromPoseToRecropRoi
HAND_FROM_POSE_SHIFT_Y: Final[float] = -0.1
HAND_RECROP_SHIFT_Y: Final[float] = -0.1  # HandRecropByRoi (scale 1)

NUM_BODY: Final[int] = 33  # landmarks 33..38 of the model are auxiliary
HEATMAP_KERNEL: Final[int] = 7  # RefineLandmarksFromHeatmapCalculator.kernel_size
HEATMAP_MIN_CONFIDENCE: Final[float] = 0.5

# bodyserve's own choices.
# The first crop, from the detector's keypoints, is tighter than mediapipe's 1.25: in groups the
# landmark model then keeps to the detected person instead of a more visible neighbour; the
# second crop, from the landmarks' own alignment points, uses mediapipe's 1.25.
DETECTION_ROI_SCALE: Final[float] = 1.0
MIN_HANDEDNESS: Final[float] = 0.1  # veto only a hand the model is sure is the other one
HAND_WRIST_TOLERANCE: Final[float] = 1.0  # in palm lengths, hand wrist vs pose wrist
HAND_SCALE_RANGE: Final[tuple[float, float]] = (0.4, 2.5)  # palm length, hand model / pose
DUPLICATE_DISTANCE: Final[float] = 0.15  # mean landmark distance / person size
SAME_PERSON_DISTANCE: Final[float] = 0.15  # face centres across windows, / body radius
MAX_DETECTION_DISAGREEMENT: Final[float] = 0.3  # landmark vs detector hips/shoulders, / radius
MAX_REFINE_SHIFT: Final[float] = 0.1  # mean landmark move of the second pass, / body size
BBOX_PADDING: Final[float] = 0.05
TILE_HINT_SCORE: Final[float] = 0.05  # a full-frame candidate this likely asks for tiles
TILE_MIN_SIDE: Final[int] = 256  # below this the full-frame pass already sees enough detail
TILE_STRIDE: Final[float] = 0.5  # of the tile side
TILE_EDGE_MARGIN: Final[float] = 0.2  # face and hips this far inside a tile, / body radius
TILE_EDGE_SLACK: Final[float] = 0.3  # body circle this far beyond a tile, / body radius

# Pose landmark indices (mediapipe33).
_L_SHOULDER, _R_SHOULDER, _L_HIP, _R_HIP = 11, 12, 23, 24
_WRIST = {"left": 15, "right": 16}
_PINKY = {"left": 17, "right": 18}
_INDEX = {"left": 19, "right": 20}


def _modules_dir() -> Path:

    return Path(mediapipe.__file__).resolve().parent / "modules"


@dataclass(frozen=True)
class Rect:
    """A rotated rectangle in continuous image pixels (mediapipe's ``NormalizedRect``)."""

    cx: float
    cy: float
    width: float
    height: float
    rotation: float  # radians, clockwise on screen (y points down)

    def transformed(self, scale: float = 1.0, shift_y: float = 0.0) -> Rect:
        """``RectTransformationCalculator`` with ``square_long: true``."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        dx, dy = -self.height * shift_y * s, self.height * shift_y * c
        side = max(self.width, self.height) * scale
        return Rect(self.cx + dx, self.cy + dy, side, side, self.rotation)

    def crop_to_image(self, size: int) -> np.ndarray:
        """2x3 affine matrix: continuous crop coordinates (``[0, size]^2``) to image pixels."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        a = np.array([[c * self.width, -s * self.height], [s * self.width, c * self.height]])
        a /= size
        offset = np.array([self.cx, self.cy]) - a @ np.array([size / 2, size / 2])
        return np.hstack([a, offset[:, None]])


def _normalize_radians(angle: float) -> float:
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def alignment_rect(start: np.ndarray, end: np.ndarray, target_angle: float) -> Rect:
    """``AlignmentPointsRectsCalculator``: centre at ``start``, side ``2 |end - start|``."""
    dx, dy = float(end[0] - start[0]), float(end[1] - start[1])
    side = 2.0 * math.hypot(dx, dy)
    rotation = _normalize_radians(target_angle - math.atan2(-dy, dx))
    return Rect(float(start[0]), float(start[1]), side, side, rotation)


def ssd_anchors() -> np.ndarray:
    """Anchor centres ``(2254, 2)`` of the pose detector (``SsdAnchorsCalculator`` options:
    5 layers, strides 8/16/32/32/32, one aspect ratio plus the interpolated scale, fixed size)."""
    strides = (8, 16, 32, 32, 32)
    centres: list[np.ndarray] = []
    layer = 0
    while layer < len(strides):
        # Consecutive layers with the same stride share one feature map.
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            last += 1
        per_cell = 2 * (last - layer)  # aspect ratio 1.0 + interpolated scale, per layer
        side = math.ceil(DETECTION_SIZE / strides[layer])
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        grid = np.stack([(xs + 0.5) / side, (ys + 0.5) / side], axis=-1).reshape(-1, 2)
        centres.append(np.repeat(grid, per_cell, axis=0))
        layer = last
    return np.asarray(np.concatenate(centres), np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0))))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-9))


@dataclass
class Detection:
    """One person from the pose detector, in image pixels."""

    box: np.ndarray  # (4,) x0, y0, x1, y1 of the detector's box, centred on the face
    keypoints: np.ndarray  # (4, 2) mid-hip, full-body scale, mid-shoulder, upper-body scale
    score: float


def weighted_nms(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU
) -> list[Detection]:
    """mediapipe's ``WEIGHTED`` non-maximum suppression: each kept detection is the
    score-weighted mean of the candidates it suppresses and keeps the best score."""
    order = np.argsort(-scores)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    remaining = np.arange(len(scores))
    out: list[Detection] = []
    while remaining.size:
        overlaps = _iou(boxes[remaining[0]], boxes[remaining])
        group = remaining[overlaps > iou]
        group = group if group.size else remaining[:1]
        w = scores[group][:, None]
        box = (boxes[group] * w).sum(0) / w.sum()
        kps = (keypoints[group] * w[:, :, None]).sum(0) / w.sum()
        out.append(Detection(box, kps, float(scores[remaining[0]])))
        remaining = remaining[overlaps <= iou] if group.size > 1 else remaining[1:]
    return out


class _Pyramid:
    """The image and lazily made halvings of it, so big crops resample without aliasing."""

    def __init__(self, image: np.ndarray) -> None:
        self.levels: list[np.ndarray] = [image]

    def level_for(self, source_pixels_per_output: float) -> tuple[np.ndarray, float, float]:
        want = max(0, math.floor(math.log2(max(source_pixels_per_output, 1.0))))
        while len(self.levels) <= want:
            top = self.levels[-1]
            if min(top.shape[:2]) < 64:
                break
            h, w = top.shape[:2]
            size = ((w + 1) // 2, (h + 1) // 2)
            # Bilinear at exactly half size averages each 2x2 block (a box filter), and is
            # several times faster than INTER_AREA on big photos.
            self.levels.append(cv2.resize(top, size, interpolation=cv2.INTER_LINEAR))
        level = self.levels[min(want, len(self.levels) - 1)]
        base = self.levels[0]
        return level, level.shape[1] / base.shape[1], level.shape[0] / base.shape[0]

    def crop(self, rect: Rect, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Warp ``rect`` to a ``size`` x ``size`` float32 RGB crop in ``[0, 1]`` (edges
        replicated, as mediapipe's ``ImageToTensorCalculator`` does by default). Returns the crop
        and the 2x3 crop-to-image matrix in continuous coordinates."""
        m = rect.crop_to_image(size)
        image, sx, sy = self.level_for(max(rect.width, rect.height) / size)
        # Continuous image coords scaled to the level, then pixel-index conventions both sides.
        m_level = np.diag([sx, sy]) @ m
        m_level[:, 2] += m_level[:, :2] @ np.array([0.5, 0.5]) - 0.5
        crop = cv2.warpAffine(
            image,
            m_level,
            (size, size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return crop.astype(np.float32) * np.float32(1.0 / 255.0), m


def _to_image(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    return np.asarray(points @ m[:, :2].T + m[:, 2])


class _Model:
    """One TFLite interpreter (XNNPACK on CPU). Outputs are returned by tensor name; where the
    shapes are distinct they are picked by shape, which does not depend on the converter's
    naming."""

    def __init__(self, path: Path, num_threads: int) -> None:

        self.path = path
        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.outputs = {
            d["name"]: (d["index"], tuple(int(v) for v in d["shape"]))
            for d in self.interpreter.get_output_details()
        }

    def __call__(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        self.interpreter.set_tensor(self.input_index, tensor[None].astype(np.float32))
        self.interpreter.invoke()
        return {
            name: self.interpreter.get_tensor(index)[0] for name, (index, _) in self.outputs.items()
        }

    def output_with_shape(self, outputs: dict[str, np.ndarray], *shape: int) -> np.ndarray:
        for name, (_, full) in self.outputs.items():
            if full[1:] == shape:
                return outputs[name]
        raise KeyError(f"{self.path.name} has no output of shape {shape}")


@dataclass
class _Body:
    landmarks: np.ndarray  # (39, 5) x, y in image pixels, z, visibility, presence
    world: np.ndarray  # (33, 3) metres, hip-centred
    presence: float  # pose flag
    detection_score: float

    @property
    def keypoints(self) -> np.ndarray:
        conf = self.landmarks[:NUM_BODY, 3] * self.landmarks[:NUM_BODY, 4]
        return np.concatenate([self.landmarks[:NUM_BODY, :2], conf[:, None]], axis=1)

    def size(self) -> float:
        pts = self.landmarks[:NUM_BODY, :2]
        return float(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]), 1.0))


class PersonDetector:
    """Every person in an RGB image: body (mediapipe33) and, where visible, both hands (hand21).

    Models load once here; calls are serialised by a lock, so one detector can be shared by
    threads. ``detector(image, max_people=16)`` returns people sorted by score, best first.

    Options (defaults are what bodyserve uses): ``num_threads`` per TFLite interpreter (default:
    the CPU count, at most 4); the detection, pose-presence and hand-presence thresholds;
    ``refine_body`` (the second landmark pass); ``hands``; ``tiles``: ``"auto"`` runs the tiled
    detection pass only when the full frame hints at people too small for it, ``"always"`` and
    ``"never"`` do what they say; ``tile_fraction`` (tile side / long side); and
    ``detection_roi_scale`` (enlargement of the first landmark crop).
    """

    def __init__(
        self,
        num_threads: int | None = None,
        *,
        min_detection_score: float = MIN_DETECTION_SCORE,
        min_pose_presence: float = MIN_POSE_PRESENCE,
        min_hand_presence: float = MIN_HAND_PRESENCE,
        refine_body: bool = True,
        hands: bool = True,
        tiles: Literal["auto", "always", "never"] = "auto",
        tile_fraction: float = 0.5,
        detection_roi_scale: float = DETECTION_ROI_SCALE,
    ) -> None:
        threads = num_threads if num_threads is not None else min(4, os.cpu_count() or 1)
        root = _modules_dir()
        self._detector = _Model(root / "pose_detection" / "pose_detection.tflite", threads)
        self._pose = _Model(root / "pose_landmark" / "pose_landmark_full.tflite", threads)
        self._recrop = _Model(root / "holistic_landmark" / "hand_recrop.tflite", threads)
        self._hand = _Model(root / "hand_landmark" / "hand_landmark_full.tflite", threads)
        self._anchors = ssd_anchors()
        self.min_detection_score = min_detection_score
        self.min_pose_presence = min_pose_presence
        self.min_hand_presence = min_hand_presence
        self.refine_body = refine_body
        self.hands = hands
        self.tiles = tiles
        self.tile_fraction = tile_fraction
        self.detection_roi_scale = detection_roi_scale
        self._lock = threading.Lock()

    # --- public ------------------------------------------------------------------------

    def __call__(self, image: np.ndarray, max_people: int = 16) -> list[PersonKeypoints]:
        image = _as_rgb_uint8(image)
        if max_people <= 0 or image.shape[0] < 2 or image.shape[1] < 2:
            return []
        with self._lock:
            pyramid = _Pyramid(image)
            # Landmarks for the most confident detections only (some end up duplicates).
            detections = self._detect_people(pyramid)[: 2 * max_people + 4]
            bodies: list[_Body] = []
            for det in detections:
                body = self._body(pyramid, det)
                if body is not None:
                    bodies.append(body)
            bodies = _drop_duplicates(bodies)
            bodies.sort(key=lambda b: -_person_score(b))
            people = [self._person(pyramid, body, image.shape) for body in bodies[:max_people]]
        return people

    # --- person detection --------------------------------------------------------------

    def _detect_people(self, pyramid: _Pyramid) -> list[Detection]:
        """Person detections (face box, four alignment keypoints) in image pixels."""
        h, w = pyramid.levels[0].shape[:2]
        boxes, kps, scores = self._detect_window(pyramid, (0, 0, w, h), TILE_HINT_SCORE)
        sure = scores >= self.min_detection_score
        candidates = weighted_nms(boxes[sure], kps[sure], scores[sure])
        # Weak candidates that are no confident person's: someone the full frame sees too small.
        hints = [d for d in weighted_nms(boxes, kps, scores) if d.score < self.min_detection_score]
        tile = self.tiles == "always" or (self.tiles == "auto" and (hints or not candidates))
        for window in _tiles(w, h, self.tile_fraction) if tile else []:
            boxes, kps, scores = self._detect_window(pyramid, window, self.min_detection_score)
            # Weighted NMS per window, as mediapipe does on its one tensor: across windows the
            # same face has very different box sizes, and a coarse window's big boxes would
            # average neighbouring people together. A tile sees only part of anyone it cuts;
            # those belong to another window.
            found = weighted_nms(boxes, kps, scores)
            candidates += [d for d in found if _inside_tile(d, window, w, h)]
        candidates.sort(key=lambda d: -d.score)
        kept: list[Detection] = []
        for cand in candidates:
            if not any(_same_person(cand, other) for other in kept):
                kept.append(cand)
        return kept

    def _detect_window(
        self, pyramid: _Pyramid, window: tuple[int, int, int, int], min_score: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x0, y0, ww, wh = window
        # Read the window from the pyramid level just above the detector's resolution.
        level, sx, sy = pyramid.level_for(max(ww, wh) / DETECTION_SIZE)
        lx0, ly0 = round(x0 * sx), round(y0 * sy)
        lw, lh = max(1, round(ww * sx)), max(1, round(wh * sy))
        sub = level[ly0 : ly0 + lh, lx0 : lx0 + lw]
        scale = DETECTION_SIZE / max(sub.shape[0], sub.shape[1])
        rw, rh = max(1, round(sub.shape[1] * scale)), max(1, round(sub.shape[0] * scale))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(sub, (rw, rh), interpolation=interpolation)
        pad_x, pad_y = (DETECTION_SIZE - rw) // 2, (DETECTION_SIZE - rh) // 2
        tensor = np.zeros((DETECTION_SIZE, DETECTION_SIZE, 3), np.float32)
        tensor[pad_y : pad_y + rh, pad_x : pad_x + rw] = resized.astype(np.float32) / 127.5 - 1.0
        # Tensor pixels to image pixels: undo the letterbox, the resize and the level's scale.
        fx, fy = sub.shape[1] / rw / sx, sub.shape[0] / rh / sy
        ox, oy = lx0 / sx, ly0 / sy
        out = self._detector(tensor)
        raw = self._detector.output_with_shape(out, 2254, 12)
        logits = self._detector.output_with_shape(out, 2254, 1)[:, 0]
        scores = _sigmoid(np.clip(logits, -100.0, 100.0))  # score_clipping_thresh 100
        keep = scores >= min_score
        raw, scores, anchors = raw[keep], scores[keep], self._anchors[keep]
        # Decode (x_scale = y_scale = w_scale = h_scale = 224, anchors of size 1) into tensor
        # pixels, then undo the letterbox into window pixels and offset into image pixels.
        centre = raw[:, 0:2] + anchors * DETECTION_SIZE
        half = raw[:, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        kps = raw[:, 4:12].reshape(-1, 4, 2) + anchors[:, None, :] * DETECTION_SIZE
        pad = np.array([pad_x, pad_y], np.float32)
        boxes = (boxes - np.tile(pad, 2)) * np.array([fx, fy, fx, fy]) + np.array([ox, oy, ox, oy])
        kps = (kps - pad) * np.array([fx, fy]) + np.array([ox, oy])
        return boxes.astype(np.float64), kps.astype(np.float64), scores.astype(np.float64)

    # --- body landmarks ----------------------------------------------------------------

    def _body(self, pyramid: _Pyramid, det: Detection) -> _Body | None:
        rect = alignment_rect(det.keypoints[0], det.keypoints[1], math.pi / 2)
        body = self._landmarks(pyramid, rect.transformed(self.detection_roi_scale), det.score)
        if body is None or not _agrees_with_detection(body, det):
            # No body, or the landmark model latched onto someone else in a crowded crop.
            return None
        if self.refine_body:
            aux = body.landmarks[NUM_BODY : NUM_BODY + 2, :2]
            rect = alignment_rect(aux[0], aux[1], math.pi / 2)
            refined = self._landmarks(pyramid, rect.transformed(POSE_ROI_SCALE), det.score)
            # The tighter crop must refine this body, not jump to a neighbour.
            if refined is not None and _mean_distance(refined, body) < MAX_REFINE_SHIFT:
                body = refined
        return body

    def _landmarks(self, pyramid: _Pyramid, rect: Rect, score: float) -> _Body | None:
        if not (rect.width > 4 and math.isfinite(rect.cx) and math.isfinite(rect.cy)):
            return None
        crop, m = pyramid.crop(rect, POSE_LANDMARK_SIZE)
        out = self._pose(crop)
        presence = float(self._pose.output_with_shape(out, 1).reshape(-1)[0])
        if presence < self.min_pose_presence:
            return None
        raw = self._pose.output_with_shape(out, 195).reshape(39, 5).astype(np.float64)
        heatmap = self._pose.output_with_shape(out, 64, 64, 39)
        xy = _refine_from_heatmap(raw[:, :2] / POSE_LANDMARK_SIZE, heatmap)
        lm = np.empty((39, 5))
        lm[:, :2] = _to_image(xy * POSE_LANDMARK_SIZE, m)
        lm[:, 2] = raw[:, 2] / POSE_LANDMARK_SIZE * rect.width
        lm[:, 3] = _sigmoid(raw[:, 3])
        lm[:, 4] = _sigmoid(raw[:, 4])
        world = self._pose.output_with_shape(out, 117).reshape(39, 3)[:NUM_BODY].astype(np.float64)
        c, s = math.cos(rect.rotation), math.sin(rect.rotation)
        world[:, :2] = world[:, :2] @ np.array([[c, s], [-s, c]])
        return _Body(lm, world, presence, score)

    # --- hands -------------------------------------------------------------------------

    def _person(self, pyramid: _Pyramid, body: _Body, shape: tuple[int, ...]) -> PersonKeypoints:
        keypoints = body.keypoints.astype(np.float32)
        hands: dict[str, np.ndarray | None] = {"left": None, "right": None}
        extras: dict[str, np.ndarray] = {
            "body_world": body.world.astype(np.float32),
            "pose_presence": np.asarray(body.presence, dtype=np.float32),
            "detection_score": np.asarray(body.detection_score, dtype=np.float32),
        }
        if self.hands:
            for side in ("left", "right"):
                found = self._hand_for(pyramid, body, side)
                if found is not None:
                    hands[side] = found[0].astype(np.float32)
                    extras[f"{side}_hand_world"] = found[1].astype(np.float32)
                    extras[f"{side}_handedness"] = np.asarray(found[2], dtype=np.float32)
        bbox = _bbox(keypoints, hands, shape)
        return PersonKeypoints(
            bbox=bbox,
            score=_person_score(body),
            body=keypoints,
            left_hand=hands["left"],
            right_hand=hands["right"],
            extras=extras,
        )

    def _hand_for(
        self, pyramid: _Pyramid, body: _Body, side: str
    ) -> tuple[np.ndarray, np.ndarray, float] | None:
        lm = body.landmarks
        wrist, pinky, index = lm[_WRIST[side]], lm[_PINKY[side]], lm[_INDEX[side]]
        if wrist[3] < MIN_WRIST_VISIBILITY:
            return None
        # HandDetectionsFromPoseToRectsCalculator: the middle finger is estimated from index and
        # pinky, the box is twice the wrist-to-middle distance, rotated along that direction.
        middle = (2.0 * index[:2] + pinky[:2]) / 3.0
        palm = float(np.linalg.norm(middle - wrist[:2]))
        if palm < 1.0:
            return None
        rough = alignment_rect(wrist[:2], middle, math.pi / 2)
        rough = Rect(middle[0], middle[1], rough.width, rough.height, rough.rotation)
        rough = rough.transformed(HAND_FROM_POSE_SCALE, HAND_FROM_POSE_SHIFT_Y)
        # HandRecropByRoi: two alignment points predicted on a 256 crop.
        crop, m = pyramid.crop(rough, HAND_RECROP_SIZE)
        out = self._recrop(crop)
        pts = self._recrop.output_with_shape(out, 1, 1, 4).reshape(2, 2).astype(np.float64)
        pts = _to_image(pts, m)
        rect = alignment_rect(pts[0], pts[1], -math.pi / 2).transformed(1.0, HAND_RECROP_SHIFT_Y)
        if not rect.width > 4:
            return None
        crop, m = pyramid.crop(rect, HAND_LANDMARK_SIZE)
        out = self._hand(crop)
        presence = float(out["Identity_1"].reshape(-1)[0])
        # Handedness is the probability of mediapipe's label 0, "Left", which mediapipe names for
        # a mirrored (selfie) image: it is the person's right hand as the pose model labels it.
        p_right = float(out["Identity_2"].reshape(-1)[0])
        p_side = p_right if side == "right" else 1.0 - p_right
        logger.debug("%s hand: presence %.2f, handedness agrees %.2f", side, presence, p_side)
        if presence < self.min_hand_presence or p_side < MIN_HANDEDNESS:
            return None
        raw = out["Identity"].reshape(21, 3).astype(np.float64)
        xy = _to_image(raw[:, :2], m)
        hand_palm = float(np.linalg.norm(xy[9] - xy[0]))
        offset = float(np.linalg.norm(xy[0] - wrist[:2])) / max(palm, hand_palm)
        logger.debug("%s hand: palm ratio %.2f, wrist offset %.2f", side, hand_palm / palm, offset)
        if not HAND_SCALE_RANGE[0] <= hand_palm / palm <= HAND_SCALE_RANGE[1]:
            return None
        if offset > HAND_WRIST_TOLERANCE:
            return None
        keypoints = np.concatenate([xy, np.full((21, 1), presence)], axis=1)
        world = out["Identity_3"].reshape(21, 3).astype(np.float64)
        c, s = math.cos(rect.rotation), math.sin(rect.rotation)
        world[:, :2] = world[:, :2] @ np.array([[c, s], [-s, c]])
        return keypoints, world, p_side


# --- helpers ------------------------------------------------------------------------------


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def _tiles(w: int, h: int, fraction: float = 0.5) -> list[tuple[int, int, int, int]]:
    """Square windows of ``fraction`` of the long side, overlapping by half, that give small
    people ``1 / fraction`` times the detector pixels of the full-frame pass."""
    long_side = max(w, h)
    side = round(fraction * long_side)
    if long_side < TILE_MIN_SIDE or side >= long_side:
        return []
    side_x, side_y = min(side, w), min(side, h)
    nx = 1 if side_x >= w else math.ceil((w - side_x) / (TILE_STRIDE * side_x)) + 1
    ny = 1 if side_y >= h else math.ceil((h - side_y) / (TILE_STRIDE * side_y)) + 1
    xs = np.linspace(0, w - side_x, nx).round().astype(int)
    ys = np.linspace(0, h - side_y, ny).round().astype(int)
    return [(int(x), int(y), side_x, side_y) for y in ys for x in xs]


def _refine_from_heatmap(xy: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """``RefineLandmarksFromHeatmapCalculator``: sigmoid-weighted mean in a 7x7 window around
    each landmark, used where the window's peak confidence reaches 0.5. ``xy`` normalised."""
    hm_h, hm_w, channels = heatmap.shape
    out = xy.copy()
    off = (HEATMAP_KERNEL - 1) // 2
    for i in range(min(len(xy), channels)):
        col, row = int(xy[i, 0] * hm_w), int(xy[i, 1] * hm_h)
        if not (0 <= col < hm_w and 0 <= row < hm_h):
            continue
        r0, r1 = max(0, row - off), min(hm_h, row + off + 1)
        c0, c1 = max(0, col - off), min(hm_w, col + off + 1)
        conf = _sigmoid(heatmap[r0:r1, c0:c1, i].astype(np.float64))
        total = conf.sum()
        if conf.max() >= HEATMAP_MIN_CONFIDENCE and total > 0:
            rows, cols = np.mgrid[r0:r1, c0:c1]
            out[i, 0] = (cols * conf).sum() / total / hm_w
            out[i, 1] = (rows * conf).sum() / total / hm_h
    return out


def _same_person(a: Detection, b: Detection) -> bool:
    """Two detections (from different windows) of one face at one body scale. The face is what
    the detector really finds; hips of people standing close together can nearly coincide."""
    ra = float(np.linalg.norm(a.keypoints[1] - a.keypoints[0]))
    rb = float(np.linalg.norm(b.keypoints[1] - b.keypoints[0]))
    r = min(ra, rb)
    if r <= 0 or max(ra, rb) > 1.5 * r:
        return False
    face_a, face_b = (a.box[:2] + a.box[2:]) / 2, (b.box[:2] + b.box[2:]) / 2
    return float(np.linalg.norm(face_a - face_b)) < SAME_PERSON_DISTANCE * r


def _agrees_with_detection(body: _Body, det: Detection) -> bool:
    """Mid-hip and mid-shoulder of the landmarks near the detector's alignment keypoints."""
    radius = float(np.linalg.norm(det.keypoints[1] - det.keypoints[0]))
    lm = body.landmarks
    hips = np.linalg.norm(lm[[_L_HIP, _R_HIP], :2].mean(0) - det.keypoints[0])
    shoulders = np.linalg.norm(lm[[_L_SHOULDER, _R_SHOULDER], :2].mean(0) - det.keypoints[2])
    return bool(max(hips, shoulders) < MAX_DETECTION_DISAGREEMENT * radius)


def _mean_distance(a: _Body, b: _Body) -> float:
    """Mean distance of the 33 landmarks, relative to the size of the smaller body."""
    dist = np.linalg.norm(a.landmarks[:NUM_BODY, :2] - b.landmarks[:NUM_BODY, :2], axis=1)
    return float(dist.mean()) / min(a.size(), b.size())


def _inside_tile(det: Detection, tile: tuple[int, int, int, int], w: int, h: int) -> bool:
    """Whether the tile saw the detected person whole enough to trust the alignment keypoints:
    face and mid-hip well inside it, and the body circle (mid-hip centre, radius to the
    full-body point, which has some margin) not much beyond its top and bottom, except across
    sides the tile shares with the image. A person cut by a tile's edge is seen whole by a
    neighbouring tile or by the full frame."""
    x0, y0, tw, th = tile
    radius = float(np.linalg.norm(det.keypoints[1] - det.keypoints[0]))
    margin, slack = TILE_EDGE_MARGIN * radius, TILE_EDGE_SLACK * radius
    face = (det.box[:2] + det.box[2:]) / 2
    lo_x, hi_x = (-np.inf if x0 == 0 else x0), (np.inf if x0 + tw >= w else x0 + tw)
    lo_y, hi_y = (-np.inf if y0 == 0 else y0), (np.inf if y0 + th >= h else y0 + th)
    for x, y in (face, det.keypoints[0]):
        if not (lo_x + margin <= x <= hi_x - margin and lo_y + margin <= y <= hi_y - margin):
            return False
    cy = float(det.keypoints[0][1])
    return bool(cy - radius >= lo_y - slack and cy + radius <= hi_y + slack)


def _person_score(body: _Body) -> float:
    return float(body.detection_score * body.presence)


def _drop_duplicates(bodies: list[_Body]) -> list[_Body]:
    """Two detections (e.g. from the full frame and a tile, or a person and the neighbour the
    landmark model preferred) that end on the same body: keep the more confident one."""
    kept: list[_Body] = []
    for body in sorted(bodies, key=lambda b: -_person_score(b)):
        if all(_mean_distance(body, other) >= DUPLICATE_DISTANCE for other in kept):
            kept.append(body)
    return kept


def _bbox(
    body: np.ndarray, hands: dict[str, np.ndarray | None], shape: tuple[int, ...]
) -> np.ndarray:
    """Box around the confident body points and the hands, padded by ``BBOX_PADDING`` of its
    size (the landmarks stop at the eyes, wrists and toes), clipped to the image."""
    pts = [body[body[:, 2] >= 0.5, :2]]
    pts += [h[:, :2] for h in hands.values() if h is not None]
    stacked = np.concatenate(pts)
    if len(stacked) < 2:
        stacked = body[:, :2]
    lo, hi = stacked.min(0), stacked.max(0)
    pad = BBOX_PADDING * (hi - lo).max()
    h, w = shape[:2]
    x0, y0 = np.clip(lo - pad, 0, [w, h])
    x1, y1 = np.clip(hi + pad, 0, [w, h])
    return np.array([x0, y0, x1, y1], dtype=np.float32)
