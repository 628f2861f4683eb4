"""Test-side emulators of real hardware: they speak the real protocols (RAPI over a pty,
Modbus RTU/TCP, vpcd card protocol, gpiozero mock pins) so the drivers run unchanged."""
