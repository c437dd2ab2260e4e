# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
