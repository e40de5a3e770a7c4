"""pipeline: typed, concurrent, restartable in-process stage pipelines on anyio.

Re-exports only; every name here is documented where it is defined.
"""

from pipeline._attempt import AttemptCall
from pipeline._run import Scheduling
from pipeline._stream_run import StreamingRun
from pipeline.builder import PipelineBuilder, StageRef
from pipeline.clock import Clock, SystemClock
from pipeline.context import CancelToken, PipelineContext
from pipeline.definition import ExecutionPattern, PipelineDefinition, RetryConfig, StageDefinition
from pipeline.errors import (
    CacheError,
    CircuitOpenError,
    ConfigError,
    DefinitionError,
    LoadError,
    OverBudgetError,
    PipelineError,
    PipelineRunError,
    PipelineValidationError,
    RemoteError,
    ResourceError,
    RunnerError,
    RunNotFinishedError,
    StageError,
    StageOutputError,
    StageTimeoutError,
    UncacheableOutputError,
    UnfingerprintableError,
    UnpicklableError,
    UsageError,
    ValidationIssue,
)
from pipeline.executor import PipelineExecutor
from pipeline.functions import FunctionStage, stage
from pipeline.plan import ExecutionPlan
from pipeline.protocol import PipelineStage
from pipeline.resolve import resolve_typed_input
from pipeline.resources import CircuitBreaker, Resource
from pipeline.result import (
    AttemptRun,
    PipelineResult,
    StageResult,
    StageRun,
    StageStatus,
    StepRun,
    cancelled_result,
    failure_result,
    skipped_result,
    success_result,
)
from pipeline.subpipeline import SubPipeline

__all__ = [
    "AttemptCall",
    "AttemptRun",
    "CacheError",
    "CancelToken",
    "CircuitBreaker",
    "CircuitOpenError",
    "Clock",
    "ConfigError",
    "DefinitionError",
    "ExecutionPattern",
    "ExecutionPlan",
    "FunctionStage",
    "LoadError",
    "OverBudgetError",
    "PipelineBuilder",
    "PipelineContext",
    "PipelineDefinition",
    "PipelineError",
    "PipelineExecutor",
    "PipelineResult",
    "PipelineRunError",
    "PipelineStage",
    "PipelineValidationError",
    "RemoteError",
    "Resource",
    "ResourceError",
    "RetryConfig",
    "RunNotFinishedError",
    "RunnerError",
    "Scheduling",
    "StageDefinition",
    "StageError",
    "StageOutputError",
    "StageRef",
    "StageResult",
    "StageRun",
    "StageStatus",
    "StageTimeoutError",
    "StepRun",
    "StreamingRun",
    "SubPipeline",
    "SystemClock",
    "UncacheableOutputError",
    "UnfingerprintableError",
    "UnpicklableError",
    "UsageError",
    "ValidationIssue",
    "cancelled_result",
    "failure_result",
    "resolve_typed_input",
    "skipped_result",
    "stage",
    "success_result",
]
