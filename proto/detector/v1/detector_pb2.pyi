from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RawImage(_message.Message):
    __slots__ = ("data", "width", "height", "channels")
    DATA_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    width: int
    height: int
    channels: int
    def __init__(self, data: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("request_id", "model", "image", "score_threshold", "iou_threshold", "max_detections", "class_ids", "class_names", "merge_iou")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    CLASS_IDS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    MERGE_IOU_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    image: Image
    score_threshold: float
    iou_threshold: float
    max_detections: int
    class_ids: _containers.RepeatedScalarFieldContainer[int]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    merge_iou: float
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., score_threshold: _Optional[float] = ..., iou_threshold: _Optional[float] = ..., max_detections: _Optional[int] = ..., class_ids: _Optional[_Iterable[int]] = ..., class_names: _Optional[_Iterable[str]] = ..., merge_iou: _Optional[float] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x_min", "y_min", "x_max", "y_max")
    X_MIN_FIELD_NUMBER: _ClassVar[int]
    Y_MIN_FIELD_NUMBER: _ClassVar[int]
    X_MAX_FIELD_NUMBER: _ClassVar[int]
    Y_MAX_FIELD_NUMBER: _ClassVar[int]
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    def __init__(self, x_min: _Optional[float] = ..., y_min: _Optional[float] = ..., x_max: _Optional[float] = ..., y_max: _Optional[float] = ...) -> None: ...

class Landmark(_message.Message):
    __slots__ = ("x", "y", "visibility")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    visibility: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., visibility: _Optional[float] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("box", "score", "class_id", "label", "landmarks")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    box: Box
    score: float
    class_id: int
    label: str
    landmarks: _containers.RepeatedCompositeFieldContainer[Landmark]
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., score: _Optional[float] = ..., class_id: _Optional[int] = ..., label: _Optional[str] = ..., landmarks: _Optional[_Iterable[_Union[Landmark, _Mapping]]] = ...) -> None: ...

class ImageSize(_message.Message):
    __slots__ = ("width", "height")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("decode_ms", "queue_ms", "inference_ms", "total_ms", "batch_size")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    queue_ms: float
    inference_ms: float
    total_ms: float
    batch_size: int
    def __init__(self, decode_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("request_id", "model", "image_size", "detections", "timings")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    image_size: ImageSize
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    timings: Timings
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., image_size: _Optional[_Union[ImageSize, _Mapping]] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class DetectBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[DetectRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[DetectRequest, _Mapping]]] = ...) -> None: ...

class DetectBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[DetectResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[DetectResponse, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "kind", "class_names", "input_size", "landmark_names", "num_landmarks", "sha256", "default_score_threshold", "default_iou_threshold", "default_max_detections", "is_default", "skeleton", "default_merge_iou")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    LANDMARK_NAMES_FIELD_NUMBER: _ClassVar[int]
    NUM_LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    SKELETON_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MERGE_IOU_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    input_size: int
    landmark_names: _containers.RepeatedScalarFieldContainer[str]
    num_landmarks: int
    sha256: str
    default_score_threshold: float
    default_iou_threshold: float
    default_max_detections: int
    is_default: bool
    skeleton: _containers.RepeatedCompositeFieldContainer[SkeletonEdge]
    default_merge_iou: float
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., input_size: _Optional[int] = ..., landmark_names: _Optional[_Iterable[str]] = ..., num_landmarks: _Optional[int] = ..., sha256: _Optional[str] = ..., default_score_threshold: _Optional[float] = ..., default_iou_threshold: _Optional[float] = ..., default_max_detections: _Optional[int] = ..., is_default: _Optional[bool] = ..., skeleton: _Optional[_Iterable[_Union[SkeletonEdge, _Mapping]]] = ..., default_merge_iou: _Optional[float] = ...) -> None: ...

class SkeletonEdge(_message.Message):
    __slots__ = ("first", "second")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    SECOND_FIELD_NUMBER: _ClassVar[int]
    first: int
    second: int
    def __init__(self, first: _Optional[int] = ..., second: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_model: _Optional[str] = ...) -> None: ...
