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
    created exclusively) kills its own actor process in the middle of
    writing a picture's files (when one of its temporary files is in
    `output`), or failing that, once a result has appeared there: a worker
    dying mid-run. The flag file records the killed process id and when
    ("mid-write" or "between pictures")."""

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
        mine = f".{os.getpid()}."
        first_result = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            names = os.listdir(self.output)
            if any(mine in n and ".part" in n for n in names):
                self._die("mid-write")
            if first_result is None and any(n.endswith(".json") for n in names):
                first_result = time.monotonic()
            if first_result is not None and time.monotonic() > first_result + 3:
                self._die("between pictures")
            time.sleep(0.002)

    def _die(self, when: str):
        with open(self.flag, "a") as f:
            f.write(f" {when}")
        os.kill(os.getpid(), signal.SIGKILL)
