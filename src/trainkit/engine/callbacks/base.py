"""The base of the loop's named callbacks: each hook is called at one point of the loop."""

from trainkit.status import Status


class Callback:
    def on_fit_start(self, trainer) -> None: ...

    def on_step_end(self, trainer, loss) -> None: ...

    def on_epoch_end(self, trainer, metrics: dict) -> None: ...

    def on_fit_end(self, trainer, status: Status) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...
