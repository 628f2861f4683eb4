"""An MCP3008 on gpiozero's mock SPI bus (bit-level protocol of the datasheet, like gpiozero's own tests).

``channels[i]`` holds the input voltage of channel i (0 .. vref)."""

from __future__ import annotations

from gpiozero.pins.mock import MockSPIDevice


class FakeMCP3008(MockSPIDevice):
    def __init__(self, *, clock_pin: int = 11, mosi_pin: int = 10, miso_pin: int = 9, select_pin: int = 8,
                 vref: float = 3.3, pin_factory: object = None) -> None:
        super().__init__(clock_pin, mosi_pin, miso_pin, select_pin, pin_factory=pin_factory)
        self.vref = vref
        self.channels = [0.0] * 8
        self.conversions = 0
        self.state = "idle"
        self.fail = False  # True: every conversion raises OSError, like a dead SPI bus / unplugged ADC

    def on_start(self) -> None:
        super().on_start()
        self.state = "idle"

    def on_bit(self) -> None:
        if self.fail:
            self.state = "idle"
            self.rx_buf = []
            raise OSError(121, "Remote I/O error (fake MCP3008)")
        if self.state == "idle":
            if self.rx_buf[-1]:  # start bit
                self.state = "mode"
                self.rx_buf = []
        elif self.state == "mode":
            self.state = "single" if self.rx_buf[-1] else "diff"
            self.rx_buf = []
        elif self.state in ("single", "diff"):
            if len(self.rx_buf) == 3:
                self._result(self.state == "diff", self.rx_word())
                self.state = "result"
        elif self.state == "result":
            if not self.tx_buf:
                self.state = "idle"
                self.rx_buf = []

    def _result(self, differential: bool, channel: int) -> None:
        v = self.channels[channel]
        if differential:
            v -= self.channels[channel ^ 1]
        v = min(max(v, 0.0), self.vref)
        self.conversions += 1
        self.tx_word(int(round(v / self.vref * 1023)), 12)  # sample period, null bit, 10 data bits
