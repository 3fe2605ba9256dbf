"""Monitors, as SpikingJelly's ``activation_based.monitor``: forward and backward hooks that record
what chosen modules of a network receive, return or hold, call by call.

``OutputMonitor(net, instance=neuron.IFNode)`` records the output of every ``IFNode`` of ``net``;
``monitor.records`` lists them in call order, ``monitor['layer.0']`` those of one module (named as in
``net.named_modules()``), ``monitor.monitored_layers`` the names. ``instance=None`` monitors the
modules of ``net``'s own class. A monitor records until ``disable()`` and keeps its hooks until
``remove_hooks()`` (or leaving its ``with`` block).
"""

from __future__ import annotations

import subprocess
import threading
from typing import Callable

from torch import nn

__all__ = ["BaseMonitor", "OutputMonitor", "InputMonitor", "AttributeMonitor", "GradInputMonitor",
           "GradOutputMonitor", "GPUMonitor"]


def _unpacked(x):
    """A one-element tuple's element (hooks see a module's arguments as a tuple)."""
    return x[0] if isinstance(x, tuple) and len(x) == 1 else x


def _identity(x):
    return x


class BaseMonitor:
    """Records, its hooks, and the module names they belong to."""

    def __init__(self):
        self.hooks = []
        self.monitored_layers = []
        self.records = []
        self.name_records_index = {}
        self._enable = True

    def __getitem__(self, i):
        if isinstance(i, int):
            return self.records[i]
        if isinstance(i, str):
            if i not in self.name_records_index:
                raise KeyError(f"{i!r} is not monitored; the monitored modules are {self.monitored_layers}")
            return [self.records[k] for k in self.name_records_index[i]]
        raise TypeError(f"index a monitor by record number (int) or module name (str), got {i!r}")

    def _monitor_modules(self, net: nn.Module, instance):
        instance = type(net) if instance is None else instance
        modules = [(name, m) for name, m in net.named_modules() if isinstance(m, instance)]
        for name, _ in modules:
            self.monitored_layers.append(name)
            self.name_records_index[name] = []
        return modules

    def _record(self, name: str, value) -> None:
        self.name_records_index[name].append(len(self.records))
        self.records.append(value)

    def clear_recorded_data(self) -> None:
        """Forget every record (the hooks stay)."""
        self.records.clear()
        for indices in self.name_records_index.values():
            indices.clear()

    def enable(self) -> None:
        self._enable = True

    def disable(self) -> None:
        self._enable = False

    def is_enable(self) -> bool:
        return self._enable

    def remove_hooks(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()

    def close(self) -> None:
        self.disable()
        self.remove_hooks()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __del__(self):
        self.close()


class OutputMonitor(BaseMonitor):
    """Records ``function_on_output(output)`` of each monitored module at each call."""

    def __init__(self, net: nn.Module, instance=None, function_on_output: Callable = _identity):
        super().__init__()
        self.function_on_output = function_on_output
        for name, m in self._monitor_modules(net, instance):
            self.hooks.append(m.register_forward_hook(self.create_hook(name)))

    def create_hook(self, name: str):
        def hook(module, args, output):
            if self._enable:
                self._record(name, self.function_on_output(_unpacked(output)))
        return hook


class InputMonitor(BaseMonitor):
    """Records ``function_on_input(input)`` of each monitored module at each call."""

    def __init__(self, net: nn.Module, instance=None, function_on_input: Callable = _identity):
        super().__init__()
        self.function_on_input = function_on_input
        for name, m in self._monitor_modules(net, instance):
            self.hooks.append(m.register_forward_pre_hook(self.create_hook(name)))

    def create_hook(self, name: str):
        def hook(module, args):
            if self._enable:
                self._record(name, self.function_on_input(_unpacked(args)))
        return hook


class AttributeMonitor(BaseMonitor):
    """Records ``function_on_attribute(module.<attribute_name>)`` of each monitored module, before
    (``pre_forward``) or after each call; e.g. ``AttributeMonitor('v', False, net, neuron.LIFNode)``."""

    def __init__(self, attribute_name: str, pre_forward: bool, net: nn.Module, instance=None,
                 function_on_attribute: Callable = _identity):
        super().__init__()
        self.attribute_name = attribute_name
        self.function_on_attribute = function_on_attribute
        for name, m in self._monitor_modules(net, instance):
            register = m.register_forward_pre_hook if pre_forward else m.register_forward_hook
            self.hooks.append(register(self.create_hook(name)))

    def create_hook(self, name: str):
        def hook(module, *args):
            if self._enable:
                self._record(name, self.function_on_attribute(getattr(module, self.attribute_name)))
        return hook


class GradInputMonitor(BaseMonitor):
    """Records ``function_on_grad_input(grad)`` of the gradient with respect to each monitored module's input."""

    def __init__(self, net: nn.Module, instance=None, function_on_grad_input: Callable = _identity):
        super().__init__()
        self.function_on_grad_input = function_on_grad_input
        for name, m in self._monitor_modules(net, instance):
            self.hooks.append(m.register_full_backward_hook(self.create_hook(name)))

    def create_hook(self, name: str):
        def hook(module, grad_input, grad_output):
            if self._enable:
                self._record(name, self.function_on_grad_input(_unpacked(grad_input)))
        return hook


class GradOutputMonitor(BaseMonitor):
    """Records ``function_on_grad_output(grad)`` of the gradient with respect to each monitored module's output."""

    def __init__(self, net: nn.Module, instance=None, function_on_grad_output: Callable = _identity):
        super().__init__()
        self.function_on_grad_output = function_on_grad_output
        for name, m in self._monitor_modules(net, instance):
            self.hooks.append(m.register_full_backward_hook(self.create_hook(name)))

    def create_hook(self, name: str):
        def hook(module, grad_input, grad_output):
            if self._enable:
                self._record(name, self.function_on_grad_output(_unpacked(grad_output)))
        return hook


class GPUMonitor(threading.Thread):
    """A thread that asks ``nvidia-smi`` for the utilization and memory of ``gpu_ids`` every ``interval``
    seconds and writes them to TensorBoard under ``log_dir`` (when given and TensorBoard is installed)
    or prints them; ``stop()`` ends it."""

    def __init__(self, log_dir: str | None = None, gpu_ids: tuple = (0,), interval: float = 600.0,
                 start_now: bool = True):
        super().__init__(daemon=True)
        if not gpu_ids:
            raise ValueError("gpu_ids must name at least one GPU")
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self.log_dir, self.gpu_ids, self.interval = log_dir, tuple(gpu_ids), interval
        self.command = ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used",
                        "--format=csv,noheader,nounits", "-i", ",".join(map(str, self.gpu_ids))]
        self.step = 0
        self._stop_event = threading.Event()
        if start_now:
            self.start()

    def stop(self) -> None:
        self._stop_event.set()

    def sample(self) -> list[tuple[str, int, int]]:
        """(index, utilization %, memory used MiB) of each GPU, now."""
        out = subprocess.run(self.command, check=True, capture_output=True, text=True, timeout=5).stdout
        return [(i.strip(), int(u), int(m)) for i, u, m in (line.split(",") for line in out.strip().splitlines())]

    def run(self) -> None:
        writer = None
        if self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(f"{self.log_dir}/gpu_monitor")
        try:
            while not self._stop_event.is_set():
                try:
                    samples = self.sample()
                except (OSError, subprocess.SubprocessError, ValueError) as error:
                    print(f"GPUMonitor stopped: {error}")
                    return
                for index, utilization, memory in samples:
                    if writer is None:
                        print(f"GPU {index}: utilization {utilization}%, memory used {memory} MiB")
                    else:
                        writer.add_scalar(f"utilization_{index}", utilization, self.step)
                        writer.add_scalar(f"memory_used_{index}", memory, self.step)
                self.step += 1
                self._stop_event.wait(self.interval)
        finally:
            if writer is not None:
                writer.close()
