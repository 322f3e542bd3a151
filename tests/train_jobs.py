"""Party jobs for the training-baseline tests: a command that also reveals gradients to the
owner (tests only: a real run never shows the owner the server's weight gradients)."""

from mpc.reveal import reveal_to
from secptune.baseline_session import gradients
from secptune.commands import Command, command
from secptune.secure import OWNER_RANK, SecureSession


@command("test-grads")
class RevealGrads(Command):
    texts: int
    P: int
    method: str

    def run(self, session, prompt=None, labels=None):
        loss, _, grads = gradients(session, self.texts, self.P, self.method, prompt, labels)
        return reveal_to(loss, OWNER_RANK), {n: reveal_to(g, OWNER_RANK) for n, g in grads.items()}


def owner_job(request, verbalizer, batch, labels, methods):
    session = SecureSession(request, verbalizer=verbalizer)
    try:
        text_id = session.load_texts(batch)
        return {
            m: session.run(RevealGrads(texts=text_id, P=batch.prompt.shape[1], method=m), batch.prompt[:1], labels)
            for m in methods
        }
    finally:
        session.close()


def server_job(model_dir):
    from secptune.checkpoints import load_hf_model
    from secptune.server.party import server_description

    describe, weights = server_description(load_hf_model(model_dir))
    session = SecureSession(None, server_info=describe, weights=weights, commands=(RevealGrads,))
    session.serve()
