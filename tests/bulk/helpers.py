"""What the Ray workers of the bulk tests import: the model loaders given
to `run_bulk` (pickled by reference, so they live in a module the workers
can import)."""

import os
import signal
import threading
import time


def bundled_model():
    """The bundled `sam_shapes` model."""
    from keras_sam.models.sam import SAM

    return SAM.from_preset("sam_shapes", weights=True)


class KillOnce:
    """A model loader whose first call (across every actor: a flag file
    created exclusively) kills its own actor process once a result has
    appeared in `output`: a worker dying mid-run. The flag file records
    the killed process id."""

    def __init__(self, output: str, flag: str):
        self.output = output
        self.flag = flag

    def __call__(self):
        model = bundled_model()
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return model  # a later actor, or this one restarted
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        threading.Thread(target=self._kill, daemon=True).start()
        return model

    def _kill(self):
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any(n.endswith(".json") for n in os.listdir(self.output)):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.02)
