"""Built-in observers: structured logging, OpenTelemetry tracing and a live progress display.

`LoggingObserver` needs nothing extra. `pipeline.observers.otel.OpenTelemetryObserver` needs the
`otel` extra and `pipeline.observers.progress.ProgressObserver` the `progress` extra; each
imports its dependency only when constructed, so importing this package stays light.
The events they consume live in `pipeline.events`, their delivery in `pipeline._dispatch`.
"""

from pipeline.observers._logging import LoggingObserver

__all__ = ["LoggingObserver"]
