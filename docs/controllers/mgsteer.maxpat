{
 "patcher": {
  "fileversion": 1,
  "appversion": {
   "major": 8,
   "minor": 5,
   "revision": 0,
   "architecture": "x64"
  },
  "rect": [
   100,
   100,
   700,
   520
  ],
  "boxes": [
   {
    "box": {
     "id": "send",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 0,
     "patching_rect": [
      40,
      420,
      160,
      22
     ],
     "text": "udpsend 127.0.0.1 9000"
    }
   },
   {
    "box": {
     "id": "slider0",
     "maxclass": "slider",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      40,
      40,
      20,
      140
     ],
     "floatoutput": 1,
     "size": 1.0,
     "parameter_enable": 0
    }
   },
   {
    "box": {
     "id": "prep0",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      40,
      200,
      105,
      22
     ],
     "text": "prepend /mgsteer/knob/0"
    }
   },
   {
    "box": {
     "id": "slider1",
     "maxclass": "slider",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      150,
      40,
      20,
      140
     ],
     "floatoutput": 1,
     "size": 1.0,
     "parameter_enable": 0
    }
   },
   {
    "box": {
     "id": "prep1",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      150,
      200,
      105,
      22
     ],
     "text": "prepend /mgsteer/knob/1"
    }
   },
   {
    "box": {
     "id": "slider2",
     "maxclass": "slider",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      260,
      40,
      20,
      140
     ],
     "floatoutput": 1,
     "size": 1.0,
     "parameter_enable": 0
    }
   },
   {
    "box": {
     "id": "prep2",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      260,
      200,
      105,
      22
     ],
     "text": "prepend /mgsteer/knob/2"
    }
   },
   {
    "box": {
     "id": "slider3",
     "maxclass": "slider",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      370,
      40,
      20,
      140
     ],
     "floatoutput": 1,
     "size": 1.0,
     "parameter_enable": 0
    }
   },
   {
    "box": {
     "id": "prep3",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      370,
      200,
      105,
      22
     ],
     "text": "prepend /mgsteer/knob/3"
    }
   },
   {
    "box": {
     "id": "msg0",
     "maxclass": "message",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      40,
      260,
      115,
      22
     ],
     "text": "/mgsteer/transport/play"
    }
   },
   {
    "box": {
     "id": "msg1",
     "maxclass": "message",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      160,
      260,
      115,
      22
     ],
     "text": "/mgsteer/transport/stop"
    }
   },
   {
    "box": {
     "id": "msg2",
     "maxclass": "message",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      280,
      260,
      115,
      22
     ],
     "text": "/mgsteer/transport/reset"
    }
   },
   {
    "box": {
     "id": "msg3",
     "maxclass": "message",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      400,
      260,
      115,
      22
     ],
     "text": "/mgsteer/status"
    }
   },
   {
    "box": {
     "id": "msg4",
     "maxclass": "message",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      520,
      260,
      115,
      22
     ],
     "text": "/mgsteer/subscribe 127.0.0.1 9001"
    }
   },
   {
    "box": {
     "id": "prompt",
     "maxclass": "textedit",
     "numinlets": 1,
     "numoutlets": 4,
     "patching_rect": [
      40,
      320,
      300,
      22
     ]
    }
   },
   {
    "box": {
     "id": "promptfmt",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      40,
      360,
      160,
      22
     ],
     "text": "prepend /mgsteer/prompt"
    }
   },
   {
    "box": {
     "id": "recv",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      400,
      420,
      120,
      22
     ],
     "text": "udpreceive 9001"
    }
   },
   {
    "box": {
     "id": "print",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 0,
     "patching_rect": [
      400,
      460,
      160,
      22
     ],
     "text": "print mgsteer-feedback"
    }
   }
  ],
  "lines": [
   {
    "patchline": {
     "source": [
      "slider0",
      0
     ],
     "destination": [
      "prep0",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "prep0",
      0
     ],
     "destination": [
      "send",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "slider1",
      0
     ],
     "destination": [
      "prep1",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "prep1",
      0
     ],
     "destination": [
      "send",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "slider2",
      0
     ],
     "destination": [
      "prep2",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "prep2",
      0
     ],
     "destination": [
      "send",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "slider3",
      0
     ],
     "destination": [
      "prep3",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "prep3",
      0
     ],
     "destination": [
      "send",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "msg0",
      0
     ],
     "destination": [
      "send",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "msg1",
      0
     ],
     "destination": [
      "send",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "msg2",
      0
     ],
     "destination": [
      "send",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "msg3",
      0
     ],
     "destination": [
      "send",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "msg4",
      0
     ],
     "destination": [
      "send",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "prompt",
      0
     ],
     "destination": [
      "promptfmt",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "promptfmt",
      0
     ],
     "destination": [
      "send",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "recv",
      0
     ],
     "destination": [
      "print",
      0
     ]
    }
   }
  ]
 }
}
