"""Party jobs for the training-baseline tests: a session that also reveals gradients to the
owner (tests only: a real run never shows the owner the server's weight gradients)."""

from mpc.reveal import reveal_to


def _grad_session_class():
    from secptune.secure import OWNER_RANK, SecureSession

    class GradSession(SecureSession):
        def grads(self, text_id=None, prompt=None, labels=None, method="", cmd=None):
            if self.is_owner:
                cmd = self._command({"op": "grads", "texts": text_id, "P": prompt.shape[1], "method": method})
            loss, _, grads = self.baseline_gradients(cmd, prompt, labels)
            return reveal_to(loss, OWNER_RANK), {n: reveal_to(g, OWNER_RANK) for n, g in grads.items()}

        def _command(self, cmd):
            while True:
                got = super()._command(cmd)
                if self.is_owner or got["op"] != "grads":
                    return got
                self.grads(cmd=got)

    return GradSession


def owner_job(request, verbalizer, batch, labels, methods):
    session = _grad_session_class()(request, verbalizer=verbalizer)
    try:
        text_id = session.load_texts(batch)
        return {m: session.grads(text_id, batch.prompt[:1], labels, m) for m in methods}
    finally:
        session.close()


def server_job(model_dir):
    from secptune.checkpoints import load_hf_model
    from secptune.secure import server_description

    describe, weights = server_description(load_hf_model(model_dir))
    session = _grad_session_class()(None, server_info=describe, weights=weights)
    session.serve()
