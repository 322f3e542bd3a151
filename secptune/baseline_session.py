"""The training baselines (:mod:`secptune.baseline`) as commands of the secure session.

A baseline step is one registered command, :class:`Train`: the owner shares its prompt and
labels, both parties compute the loss and gradients on shares (CrypTen's autograd, in a
session opened with ``native=True``), update the trained tensors with Adam on shares, and
reveal only the loss, to the owner.  A server runs it only if its session accepts it
(``SecureSession(..., commands=(Train,))``, as :mod:`secptune.server.party` does).
"""

from __future__ import annotations

from mpc.reveal import reveal_to
from secptune import baseline
from secptune.commands import Command, command
from secptune.errors import SecureComputationError
from secptune.lockstep import OWNER_RANK, share_input
from secptune.secure import PhaseRecorder, SecureSession


@command("train")
class Train(Command):
    """One step of baseline ``method`` on text set ``texts`` with a prompt of P vectors."""

    texts: int
    P: int
    method: str
    lr: float
    # False stops after the gradients (benchmarks: the Adam step's cost depends only on the
    # trained tensors' sizes)
    step: bool

    def run(self, session: SecureSession, prompt=None, labels=None) -> dict:
        phases: dict = {}
        recorder = PhaseRecorder(phases)
        loss, params, grads = gradients(session, self.texts, self.P, self.method, prompt, labels, phase=recorder)
        if self.step:
            adam = session.state.setdefault("adam", baseline.Adam(lr=self.lr))
            adam.lr = self.lr  # a schedule may change it between steps; the moments carry over
            with recorder("step"):
                updated = adam.step(params, grads)
            if self.method == "sft":
                session.model.w.update(updated)
        entry = {"method": self.method, "phases": phases, "loss": reveal_to(loss, OWNER_RANK)}
        train_log(session).append(entry)
        return entry


def gradients(session: SecureSession, texts: int, P: int, method: str, prompt=None, labels=None, phase=None):
    """Both parties: the owner's prompt [1, P, H] and one-hot labels [B, L] shared, then the
    loss, trained tensors and gradients of ``method`` on text set ``texts``, all shared."""
    if not session.model.nl.trainable:
        raise SecureComputationError("training baselines need a session opened with native=True")
    text = session.texts[texts]
    B, L = text.batch.pred_onehot.size(0), session.verbalizer.size(0)
    shared_prompt = share_input(prompt, (1, P, session.arch.hidden), OWNER_RANK)
    shared_labels = share_input(labels, (B, L), OWNER_RANK)
    return baseline.loss_and_grads(
        session.model, (text.token, text.batch, text.embeds), shared_prompt, session.verbalizer, shared_labels,
        method, phase=phase,
    )


def train_step(session: SecureSession, text_id: int, prompt, labels, method: str, lr: float = 1e-3,
               step: bool = True) -> dict:
    """Owner: one baseline step (:class:`Train`); returns per-phase traffic and time and the revealed loss."""
    return session.run(Train(texts=text_id, P=prompt.shape[1], method=method, lr=lr, step=step), prompt, labels)


def train_log(session: SecureSession) -> list[dict]:
    """This party's entries of the session's training steps (also in the party's result, ``train``)."""
    return session.state.setdefault("logs", {}).setdefault("train", [])
